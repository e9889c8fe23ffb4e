"""Runs the pipeline on this machine with LocalDagRunner (MLMD in SQLite)."""

from __future__ import annotations

import os

from histopipe.components import datasets
from histopipe.core.configs import PipelineConfig
from histopipe.core.errors import make_output_dir
from histopipe.core.layout import RunPaths


def run_local(config: PipelineConfig, data_root: str, out_dir: str) -> RunPaths:
  """Runs every component on `data_root`; artifacts, ML Metadata and pushed
  models go under `out_dir` (see RunPaths).

  The data folder and its label file are checked first, so a missing folder
  or a bad label row fails in a second, before TFX starts.
  """
  data_root = os.path.abspath(data_root)
  config = datasets.with_detected_format(config, data_root)
  datasets.plan(data_root, config.data.format, config.data.slide_pattern, config.data.labels_file)
  paths = RunPaths(os.path.abspath(out_dir))
  make_output_dir(paths.out_dir)
  # TFX takes seconds to import: only once the inputs are known to be usable.
  from tfx import v1 as tfx  # pylint: disable=import-outside-toplevel
  from histopipe.pipeline import pipeline as pipeline_dag  # pylint: disable=import-outside-toplevel
  dag = pipeline_dag.create_pipeline(
      config,
      data_root=data_root,
      pipeline_root=paths.pipeline_root,
      serving_model_dir=paths.serving_model_dir,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(paths.metadata_path))
  tfx.orchestration.LocalDagRunner().run(dag)
  return paths
