"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks",
BMVC 2016), as the seeds' IDC classifier used them: WRN-d-k.

A 3x3 convolution to 16 channels, then three groups of n = (d - 4) / 6
pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, the
paper's B(3,3)) with 16k, 32k and 64k channels, the second and third groups
starting at stride 2; a 1x1 projection where a block changes the width or
the stride; BN-ReLU and global average pooling at the end (the features).
WRN-16-8 (n = 2): 11.0 M parameters with its 10-class layer, as the paper's
Table 1 gives.

Written here: keras.applications has no wide ResNet, and the paper's Torch
and PyTorch code is not a Keras model. He-normal initialisation and no
biases in the convolutions, as the paper's code.
"""

from __future__ import annotations

import tf_keras as keras


def _block(x, filters: int, stride: int, dropout: float, name: str):
  """One pre-activation basic block, B(3,3), with dropout between its convolutions."""
  activated = keras.layers.ReLU(name=f"{name}_relu1")(
      keras.layers.BatchNormalization(name=f"{name}_bn1")(x))
  shortcut = x
  if stride != 1 or x.shape[-1] != filters:
    # The paper's projection takes the activated input, as its code does.
    shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                   kernel_initializer="he_normal",
                                   name=f"{name}_projection")(activated)
  y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv1")(activated)
  y = keras.layers.ReLU(name=f"{name}_relu2")(
      keras.layers.BatchNormalization(name=f"{name}_bn2")(y))
  if dropout:
    y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
  y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv2")(y)
  return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def wide_resnet(input_shape, depth: int = 16, width: int = 8,
                dropout: float = 0.0) -> keras.Model:
  """WRN-`depth`-`width` without its classifier: images -> [64 * width] features."""
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f"a wide ResNet's depth is 6n + 4 with n >= 1 (10, 16, 22, 28, 40); "
                     f"got {depth}")
  if width < 1:
    raise ValueError(f"a wide ResNet's width factor is at least 1; got {width}")
  blocks = (depth - 4) // 6
  inputs = keras.Input(input_shape)
  x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name="conv0")(inputs)
  for group, (filters, stride) in enumerate(((16 * width, 1), (32 * width, 2),
                                             (64 * width, 2)), start=1):
    for index in range(blocks):
      x = _block(x, filters, stride if index == 0 else 1, dropout,
                 name=f"group{group}_block{index + 1}")
  x = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(x))
  features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, features, name=f"wide_resnet_{depth}_{width}")
