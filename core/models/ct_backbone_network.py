"""ResNet v1.5 in Keras 3, laid out as torchvision's and named as keras.applications'.

keras.applications' ResNets are v1: a block that halves the resolution puts
its stride on the first 1x1 conv. torchvision's ResNets, and the PyTorch
checkpoints trained from them, are v1.5: the stride is on the 3x3 conv
(which then sees every pixel, not one in four). Same weights, different
network: a v1.5 checkpoint needs this builder.

PyTorch pads symmetrically; Keras' padding="same" pads a stride-2 conv on the
bottom and right only, which shifts every feature map by a pixel. So padding
is explicit (ZeroPadding2D, then a "valid" conv). BatchNorm's epsilon is
PyTorch's 1e-5, and convs have no bias (BatchNorm follows each one).

Layer names are those of keras.applications (conv1_conv, conv2_block1_1_conv,
..., conv5_block3_out), so core.models.resnet's stages, freezing, frozen-stage cache
and Grad-CAM layer apply unchanged.
"""
from __future__ import annotations

import keras

BLOCKS = {"resnet152": (3, 8, 36, 3)}  # bottleneck blocks of stages conv2..conv5
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default


def _batchnorm(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def bottleneck(x, filters: int, stride: int, project: bool, name: str):
    """1x1 (filters) -> 3x3 with the stride -> 1x1 (4 x filters), plus the
    shortcut: a strided 1x1 projection in the first block of a stage."""
    shortcut = x
    if project:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = _batchnorm(f"{name}_0_bn")(shortcut)
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(x)
    x = _batchnorm(f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_2_pad")(x)
    x = keras.layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(x)
    x = _batchnorm(f"{name}_2_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, use_bias=False, name=f"{name}_3_conv")(x)
    x = _batchnorm(f"{name}_3_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def resnet_v15(x, blocks=BLOCKS["resnet152"]):
    """The backbone without its classifier, built on tensor `x`; returns the
    last stage's output (conv5_block3_out for ResNet-152)."""
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _batchnorm("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    # Zeros pad like PyTorch's -inf here: the max pool's inputs are ReLU outputs (>= 0).
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, count in enumerate(blocks):
        for block in range(count):
            first = block == 0
            stride = 2 if first and stage > 0 else 1  # conv2 follows the max pool at full stride
            x = bottleneck(x, 64 * 2**stage, stride, project=first, name=f"conv{stage + 2}_block{block + 1}")
    return x
