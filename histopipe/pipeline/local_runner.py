"""Runs the pipeline on this machine with LocalDagRunner (MLMD in SQLite)."""

from __future__ import annotations

import dataclasses
import os

from tfx import v1 as tfx

from histopipe.pipeline import pipeline as pipeline_dag
from histopipe.core.configs import PipelineConfig


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where a local run keeps its artifacts, metadata and pushed models."""
  out_dir: str

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.out_dir, "pipeline_root")

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.out_dir, "metadata.sqlite")

  @property
  def serving_model_dir(self) -> str:
    return os.path.join(self.out_dir, "serving_model")


def run_local(config: PipelineConfig, data_root: str, out_dir: str) -> RunPaths:
  paths = RunPaths(os.path.abspath(out_dir))
  os.makedirs(paths.out_dir, exist_ok=True)
  dag = pipeline_dag.create_pipeline(
      config,
      data_root=os.path.abspath(data_root),
      pipeline_root=paths.pipeline_root,
      serving_model_dir=paths.serving_model_dir,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(paths.metadata_path))
  tfx.orchestration.LocalDagRunner().run(dag)
  return paths
