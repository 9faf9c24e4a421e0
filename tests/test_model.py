"""The model: real ImageNet weights, stage freezing, the cached/full split, safe loading."""
import keras
import numpy as np
import pytest

from core.models.resnet import (build_model, frozen_boundary, layer_stage, load_model, predict_proba, set_trainable, split_at)


@pytest.fixture(scope="module")
def model(weights):
    return build_model("resnet50", input_size=64, weights=weights, train_from="conv5")


def test_imagenet_weights_are_loaded(model, weights):
    reference = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(64, 64, 3))
    for name in ("conv1_conv", "conv3_block2_2_conv", "conv5_block3_3_bn"):
        for ours, theirs in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_head_is_two_class_softmax(model):
    probs = model(np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32"))
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, rtol=1e-5)


def test_freezing_by_stage_keeps_batchnorm_in_inference(model):
    set_trainable(model, "conv4")
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "conv4_block1_1_conv" in trainable and "conv5_block3_3_conv" in trainable
    assert "conv3_block4_3_conv" not in trainable and "conv1_conv" not in trainable
    assert {"head_dense"} <= trainable
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in trainable)

    set_trainable(model, "head")
    assert {layer.name for layer in model.layers if layer.trainable and layer.weights} == {"head_dense"}


def test_stage_of_layers():
    assert layer_stage("pool1_pool") == "conv1"
    assert layer_stage("conv4_block6_out") == "conv4"
    assert layer_stage("head_dense") is None


def test_split_at_the_frozen_boundary_gives_the_same_output(model):
    assert frozen_boundary(model, "conv5") == "conv4_block6_out"
    assert frozen_boundary(model, "head") == "conv5_block3_out"
    assert frozen_boundary(model, "conv1") is None
    frozen, top = split_at(model, "conv4_block6_out")
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(top(frozen(images))), np.asarray(model(images)), atol=1e-6)


def test_unknown_backbone_and_missing_weights_are_named():
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="nowhere.h5"):
        build_model(weights="/nowhere.h5")


def test_saved_model_loads_in_safe_mode_with_same_outputs(model, tmp_path):
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(predict_proba(loaded, images), predict_proba(model, images), atol=1e-6)


def test_model_with_code_in_a_lambda_is_refused(tmp_path):
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "evil.keras")
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        load_model(tmp_path / "evil.keras")


def test_flip_tta_averages_the_scan_and_its_mirror(model):
    images = np.random.default_rng(3).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    plain = predict_proba(model, images)
    mirrored = predict_proba(model, images[:, :, ::-1])
    np.testing.assert_allclose(predict_proba(model, images, batch_size=2, flip_tta=True), (plain + mirrored) / 2,
                               atol=1e-6)
