"""Watching a model's inputs: TFDV statistics of the bags' image statistics and
their drift against what a model was trained on."""
