"""histopipe: whole-slide images to a served MIL model, as a TFX pipeline.

Each subpackage `histopipe.<name>` is the folder `<name>/` at the repository
root (setup.py maps them; an installed wheel holds them under histopipe/).
Bottom layer first; a module may import its own subpackage and the layers
below it (tests/test_import_layers.py checks it):

  core        settings, names shared by writers and readers, errors, storage
  bags        what a slide becomes and its tf.Example encoding
  slides      slide readers, tissue, tiling, previews (no TFX, no TensorFlow)
  data        dataset layouts, label files, the synthetic generator
  beam        the Beam stages that tile slides | monitoring: drift statistics |
              encoders: frozen tile encoders
  trainer     the TFX module file | serving: calling the model | components:
              the custom TFX components, one folder each
  reports     what a run produced: summary, HTML report, attention heatmaps
  pipeline    the DAG, the local runner, code fingerprints
  kubeflow    the DAG compiled for Kubeflow Pipelines, and runs of it
  cli         the `histopipe` command
"""

SUBPACKAGES = ("core", "bags", "slides", "data", "beam", "monitoring", "encoders",
               "trainer", "serving", "components", "reports", "pipeline", "kubeflow", "cli")
