"""The evidence penalty (core.training.evidence_penalty): the share it counts, the Grad-CAM it
counts it on, that it moves a model's evidence off a shortcut outside the lungs, and a tiny
run trained with it."""
import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from core.models.resnet import LAST_CONV_LAYER, load_model, predict_proba
from core.runs import storage
from core.runs.train_config import TrainConfig
from core.training import evidence_penalty
from core.training.fit import compile_model, train
from core.training.frozen_cache import ActivationBatches
from core.data.image_cache import cache_images

SIZE = 16  # tiny_classifier's input: a 4 x 4 grid at its last conv stage


def tiny_classifier(seed: int = 0) -> keras.Model:
    """The classifier's shape in miniature (a last conv stage named as ResNet's, then the head's
    layers), so that a few hundred steps take a second."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu", name=LAST_CONV_LAYER)(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(0.0, name="head_dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head_dense")(x))


def test_outside_share_is_the_maps_mass_outside_the_fields():
    empty = evidence_penalty.EMPTY_MAP_MASS
    cam = np.array([[[10.0, 30.0], [0.0, 0.0]],  # 30 of 40 in the right column
                    [[20.0, 20.0], [0.0, 0.0]],  # half of it in a cell half inside
                    [[0.0, 0.0], [0.0, 0.0]],    # a map that decides nothing
                    [[5.0, 5.0], [5.0, 5.0]]],   # a slice whose lungs were not found
                   np.float32)
    fields = np.array([[[1.0, 0.0], [1.0, 0.0]],
                       [[1.0, 0.5], [1.0, 1.0]],
                       [[1.0, 0.0], [1.0, 0.0]],
                       [[1.0, 1.0], [1.0, 1.0]]], np.float32)
    expected = [(30 + empty) / (40 + empty), (10 + empty) / (40 + empty), 1.0, 0.0]
    np.testing.assert_allclose(evidence_penalty.outside_share(cam, fields), expected, rtol=1e-6)
    # Shrinking a map does not lower its share: it raises it towards all outside.
    shrunk = np.asarray(evidence_penalty.outside_share(cam / 10000, fields))
    assert (shrunk[:2] > np.asarray(expected[:2])).all() and shrunk[:2].min() > 0.9


def test_the_map_is_grad_cam_of_the_true_class_against_the_other():
    """With GAP -> dense, the Grad-CAM of a logit difference is sum_k (w_kc - w_ko) A_k / cells at
    every cell (its gradient is the same everywhere): the map the training step builds must be
    that one's magnitude."""
    model = tiny_classifier()
    images = np.random.default_rng(0).random((4, SIZE, SIZE, 3), np.float32)
    true = np.array([0, 1, 1, 0])
    features = keras.Model(model.input, model.get_layer(LAST_CONV_LAYER).output)(images).numpy()
    kernel = model.get_layer("head_dense").kernel.numpy()
    against = kernel[:, true] - kernel[:, 1 - true]
    expected = np.abs(np.einsum("nhwk,kn->nhw", features, against)) / 16
    fields = np.zeros((4, 4, 4), np.float32)
    fields[:, :, :2] = 1  # the left half of the grid "in the lungs"
    empty = evidence_penalty.EMPTY_MAP_MASS
    expected_share = (expected[:, :, 2:].sum((1, 2)) + empty) / (expected.sum((1, 2)) + empty)

    penalty = evidence_penalty.EvidencePenalty(model, 1.0)
    _, outside = penalty.forward((images, fields), np.eye(2, dtype="float32")[true], training=False)
    np.testing.assert_allclose(outside, expected_share, rtol=1e-4)


def test_above_a_cache_at_the_last_conv_stage_the_map_is_of_the_cached_activations():
    """train_from "head" caches the last conv stage itself: the penalised part starts there."""
    model = tiny_classifier()
    images = np.random.default_rng(3).random((4, SIZE, SIZE, 3), np.float32)
    labels, fields = np.eye(2, dtype="float32")[[0, 1, 0, 1]], np.zeros((4, 4, 4), np.float32)
    fields[:, :, :2] = 1
    features = keras.Model(model.input, model.get_layer(LAST_CONV_LAYER).output)(images)
    whole = evidence_penalty.EvidencePenalty(model, 1.0).forward((images, fields), labels, training=False)
    above = evidence_penalty.EvidencePenalty(model, 1.0, boundary=LAST_CONV_LAYER).forward(
        (features, fields), labels, training=False)
    for from_images, from_cache in zip(whole, above):
        np.testing.assert_allclose(from_images, from_cache, rtol=1e-5)


def test_zero_weight_trains_as_the_plain_model():
    assert evidence_penalty.for_training(model := tiny_classifier(), 0.0) is model
    images = np.random.default_rng(1).random((8, SIZE, SIZE, 3), np.float32)
    labels = np.eye(2, dtype="float32")[[0, 1] * 4]
    fields = np.zeros((8, 4, 4), np.float32)  # everything "outside": the largest share there is
    plain, penalised = tiny_classifier(), tiny_classifier()
    wrapped = evidence_penalty.EvidencePenalty(penalised, 0.0)
    for trained in (plain, wrapped):
        compile_model(trained, 1e-2)
    plain_loss = plain.fit(images, labels, batch_size=8, epochs=3, verbose=0).history["loss"]
    history = wrapped.fit((images, fields), labels, batch_size=8, epochs=3, verbose=0).history
    np.testing.assert_allclose(history["loss"], plain_loss, rtol=1e-5)
    for before, after in zip(plain.get_weights(), penalised.get_weights()):
        np.testing.assert_allclose(before, after, atol=1e-5)
    assert all(share > 0 for share in history[evidence_penalty.OUTSIDE_METRIC])  # measured, not penalised


def test_a_penalised_models_checkpoint_loads_back(tmp_path):
    """A run's epoch checkpoints save and load the model fit trains (core.training.checkpoint):
    with the penalty, the wrapper, whose weights and optimizer state must round-trip."""
    images, labels = np.random.default_rng(4).random((4, SIZE, SIZE, 3), np.float32), np.eye(2)[[0, 1, 0, 1]]
    fields = np.zeros((4, 4, 4), np.float32)
    saved = evidence_penalty.EvidencePenalty(tiny_classifier(seed=0), 1.0)
    compile_model(saved, 1e-2)
    saved.fit((images, fields), labels, epochs=1, verbose=0)
    saved.save_weights(tmp_path / "model.weights.h5")
    loaded = evidence_penalty.EvidencePenalty(tiny_classifier(seed=1), 1.0)
    compile_model(loaded, 1e-2)
    loaded.optimizer.build(loaded.trainable_variables)  # as EpochCheckpoint does before loading
    loaded.load_weights(tmp_path / "model.weights.h5")
    for ours, theirs in zip(saved.get_weights() + [v.numpy() for v in saved.optimizer.variables],
                            loaded.get_weights() + [v.numpy() for v in loaded.optimizer.variables]):
        np.testing.assert_array_equal(ours, theirs)


def shortcut_task(count: int = 64, seed: int = 2, shortcut: bool = True, lesion: bool = True,
                  classes=(0, 1)):
    """Slices of noise; class 1 carries a strong mark at the right edge (outside the "lungs": a
    caption, an arrow) and a weaker one at the left edge (inside: a lesion), class 0 neither.
    Either mark alone predicts the class. Returns (images, one-hot labels, fields)."""
    rng = np.random.default_rng(seed)
    labels = np.array(classes)[np.arange(count) % len(classes)]
    images = rng.normal(0.0, 0.2, (count, SIZE, SIZE, 3)).astype(np.float32)
    images[labels == 1, 6:10, 12:, :] += 1.0 * shortcut
    images[labels == 1, 6:10, :4, :] += 0.5 * lesion
    fields = np.zeros((count, 4, 4), np.float32)
    fields[:, :, :2] = 1.0
    return images, np.eye(2, dtype="float32")[labels], fields


def trained_on_the_shortcut_task(weight: float) -> dict:
    """A tiny classifier trained with `weight` on shortcut_task, and how it decides: the share of
    class 1's evidence outside the lungs (measured here, not by the penalty), its accuracy, and its
    mean probability of class 1 for slices with the shortcut only, the lesion only, or neither."""
    images, labels, fields = shortcut_task()
    model = tiny_classifier()
    trained = evidence_penalty.for_training(model, weight)
    compile_model(trained, 1e-2)
    trained.fit((images, fields) if weight else images, labels, batch_size=len(images), epochs=150, verbose=0)
    features = keras.Model(model.input, model.get_layer(LAST_CONV_LAYER).output)(images).numpy()
    kernel = model.get_layer("head_dense").kernel.numpy()
    cam = np.abs(np.einsum("nhwk,k->nhw", features, kernel[:, 1] - kernel[:, 0]))[labels[:, 1] == 1]
    found = {"outside": float((cam[:, :, 2:].sum((1, 2)) / np.maximum(cam.sum((1, 2)), 1e-9)).mean()),
             "accuracy": float((model.predict_on_batch(images).argmax(1) == labels.argmax(1)).mean())}
    for name, marks in {"shortcut only": dict(lesion=False), "lesion only": dict(shortcut=False),
                        "neither": dict(shortcut=False, lesion=False)}.items():
        probe = shortcut_task(32, seed=5, classes=(1,), **marks)[0]
        found[name] = float(model.predict_on_batch(probe)[:, 1].mean())
    return found


def test_the_penalty_moves_the_evidence_off_a_shortcut_outside_the_lungs():
    plain, penalised = trained_on_the_shortcut_task(0.0), trained_on_the_shortcut_task(3.0)
    assert plain["accuracy"] == penalised["accuracy"] == 1.0, (plain, penalised)
    # Unpenalised, the stronger mark outside the lungs carries the decision: alone, it reads as class 1.
    assert plain["outside"] > 0.5 and plain["shortcut only"] > 0.7, plain
    # Penalised, the evidence is in the lungs: the shortcut alone is read as little more than noise,
    # and the lesion is what raises the probability (an escape by deciding from nothing would fail
    # the accuracy above).
    assert penalised["outside"] < 0.1, penalised
    assert penalised["shortcut only"] - penalised["neither"] < 0.1, penalised
    assert penalised["lesion only"] - penalised["neither"] > 0.1, penalised


def phantom(size: int = 128) -> np.ndarray:
    """Black air, a bright body and two dark lungs, the right lung larger, and a caption."""
    image = np.zeros((size, size), np.uint8)
    cv2.ellipse(image, (64, 66), (52, 42), 0, 0, 360, 200, -1)
    cv2.ellipse(image, (42, 62), (18, 28), 0, 0, 360, 60, -1)
    cv2.ellipse(image, (84, 64), (13, 22), 0, 0, 360, 60, -1)
    cv2.putText(image, "A", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1)
    return np.repeat(image[:, :, None], 3, axis=2)


def test_lung_fields_follow_the_slice_and_spare_a_slice_without_lungs():
    image = phantom()
    fields = evidence_penalty.lung_fields(np.stack([image, image[:, ::-1], np.full_like(image, 120)]), (4, 4))
    assert fields.shape == (3, 4, 4) and fields.dtype == np.float32
    assert fields[0, 0, 0] == 0 and fields[0, 1:3, 1].min() > 0.9   # the caption's corner out, a lung in
    assert fields[0, :, 1].sum() > fields[0, :, 2].sum()           # the larger lung on the left of the image
    np.testing.assert_allclose(fields[1], fields[0][:, ::-1], atol=0.05)  # a flipped view, flipped fields
    assert (fields[2] == 1).all()  # no lungs found: no penalty


def test_cached_batches_carry_their_rows_of_fields():
    x, y = np.arange(6, dtype=np.float16).reshape(6, 1), np.array([0, 1, 0, 1, 0, 1])
    fields = np.arange(6, dtype=np.float32).reshape(6, 1, 1) * 10
    (inputs, rows), labels, weights = ActivationBatches(x, y, 4, epoch_size=6, seed=0, class_weight={0: 1.0, 1: 1.0},
                                                        fields=fields)[0]
    np.testing.assert_array_equal(rows[:, 0, 0], inputs[:, 0] * 10)
    assert labels.shape == (4, 2) and weights.shape == (4,)


@pytest.mark.parametrize("streamed", [False, True], ids=["cached", "streamed"])
def test_a_run_with_the_penalty_trains_and_saves_the_plain_model(tmp_path, data_dir, weights, monkeypatch,
                                                                  streamed):
    if streamed:  # over the cache's budget: the images stream through the whole model
        monkeypatch.setenv("COVIDCT_FROZEN_CACHE_GB", "0")
    lines = []
    config = TrainConfig(data_dir=str(data_dir), weights=weights, input_size=64, batch_size=4,
                         max_images_per_split=4, head_epochs=1, finetune_epochs=1, evidence_penalty=5.0)
    run_dir = train(config, report=lines.append, runs_root=tmp_path)
    assert storage.read_status(run_dir)["state"] == "completed"
    assert any("over budget" in line for line in lines) == streamed
    assert any(line.startswith("evidence penalty: lung fields found on") for line in lines) != streamed
    assert any("val_evidence_outside" in line for line in lines)  # each epoch's line shows the shares
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 2
    assert history[["evidence_outside", "val_evidence_outside"]].apply(lambda share: share.between(0, 1)).all().all()
    model = load_model(run_dir / "model.keras")  # safe_mode: the plain classifier, no training step in it
    assert not isinstance(model, evidence_penalty.EvidencePenalty) and model.name == "resnet50_covidct"
    predictions = pd.read_csv(run_dir / "predictions.csv").head(4)
    images = cache_images([str(data_dir / path) for path in predictions.path], 64).array()
    np.testing.assert_allclose(predict_proba(model, images, flip_tta=True), predictions.prob, atol=1e-4)
