"""Compiles the same DAG as the local runner into a KFP v2 pipeline spec.

`KubeflowDagRunner` (v1) is gone in TFX 1.16; `KubeflowV2DagRunner` writes a
PipelineJob that Kubeflow Pipelines v2 (or Vertex AI Pipelines) runs. The
image must contain this package (see kubeflow/Dockerfile, issue 6), because
Transform and Trainer load `trainer.*` by module path.
"""

from __future__ import annotations

import os

from tfx import v1 as tfx

from pipeline import pipeline as pipeline_dag
from pipeline.configs import PipelineConfig


def compile_pipeline(config: PipelineConfig, output_file: str, image: str,
                     pipeline_root: str, data_root: str, serving_model_dir: str) -> str:
  """Writes the PipelineJob spec to `output_file` (JSON or YAML by extension)."""
  dag = pipeline_dag.create_pipeline(config, data_root=data_root,
                                     pipeline_root=pipeline_root,
                                     serving_model_dir=serving_model_dir)
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=image, display_name=config.name),
      output_dir=os.path.dirname(os.path.abspath(output_file)),
      output_filename=os.path.basename(output_file))
  runner.run(dag)
  return output_file
