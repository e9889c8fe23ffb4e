"""ImageNet weights for Keras' backbones, from the local Keras cache only."""

from __future__ import annotations

import os

# The no-top ImageNet weight files as Keras names them in its cache.
KERAS_CACHE_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "nasnet_mobile": "nasnet_mobile_no_top.h5",
}


def cached_imagenet_weights(name: str) -> str:
  """The Keras cache's copy of a backbone's ImageNet weights ($KERAS_HOME or
  ~/.keras, then models/). Read from there, never downloaded: a run must not
  depend on the network, so a missing file is an error saying where to put it."""
  home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
  path = os.path.join(home, "models", KERAS_CACHE_FILES[name])
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"imagenet_weights 'imagenet': {path} is not there, and nothing is downloaded at run "
        f"time; copy the Keras no-top weights file there, or give its path as imagenet_weights")
  return path


def resolve(name: str, weights: str) -> str:
  """`weights` as a file path ("" for random init; "imagenet": the cache's file)."""
  if weights == "imagenet":
    weights = cached_imagenet_weights(name)
  if weights and not os.path.exists(weights):
    raise FileNotFoundError(f"backbone weights file not found: {weights}")
  return weights
