"""histopipe: whole-slide images to a served MIL model, as a TFX pipeline.

Subpackages, bottom layer first (each may import only those before it; the
order is checked by tests/test_import_layers.py):

  core        settings, names shared by writers and readers, errors, progress
  components  slide reading, tiling, datasets, the SlideExampleGen
  trainer     the TFX module file: Transform, Trainer, Tuner, metrics
  serving     loading and calling the exported model: client, scoring, dev server
  reports     what a run produced: summary, HTML report, attention heatmaps
  pipeline    the DAG and the local runner
  kubeflow    the DAG compiled for Kubeflow Pipelines, and runs of it
  cli         the `histopipe` command
"""
