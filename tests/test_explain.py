import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from core.inference.explain import Explainer
from core.inference.heatmaps import overlay  # noqa: E402

SIZE, SQUARE = 32, 8


def noise_images(n, rng):
    return rng.uniform(0, 120, (n, SIZE, SIZE, 3)).astype(np.float32)


def add_square(image, row, col):
    """Class 1: a bright square on the noise."""
    image = image.copy()
    image[row:row + SQUARE, col:col + SQUARE] = 255
    return image


def synthetic_dataset(n, rng):
    images = noise_images(n, rng)
    labels = rng.integers(0, 2, n)
    for i in np.flatnonzero(labels):
        row, col = rng.integers(0, SIZE - SQUARE + 1, 2)
        images[i] = add_square(images[i], row, col)
    return images, labels


def small_classifier(conv_initializer="glorot_uniform"):
    """Same shape of model as the app's: preprocessing inside (a Lambda, which a
    full clone_model refuses), a named last conv layer, a softmax Dense(2)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)  # the heatmap comes back at half size and is upsampled
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            kernel_initializer=conv_initializer, name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained_model():
    keras.utils.set_random_seed(0)
    images, labels = synthetic_dataset(512, np.random.default_rng(0))
    model = small_classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    test_images, test_labels = synthetic_dataset(128, np.random.default_rng(1))
    _, accuracy = model.evaluate(test_images, test_labels, verbose=0)
    assert accuracy > 0.95, "the toy model should learn the square"
    return model


@pytest.fixture(scope="module")
def explainer(trained_model):
    return Explainer(trained_model, layer="last_conv")


def corner_images():
    """Two class-1 images: the square in the top-left and in the bottom-right corner."""
    noise = noise_images(2, np.random.default_rng(2))
    far = SIZE - SQUARE
    return np.stack([add_square(noise[0], 0, 0), add_square(noise[1], far, far)]), [(0, 0), (far, far)]


def mass_near_squares(heatmaps, corners, margin=2):
    """Fraction of each heatmap within `margin` pixels of its square (the map is
    computed at half resolution), and whether its peak lies there."""
    fractions, peaks_near = [], []
    for heatmap, (row, col) in zip(heatmaps, corners):
        near_square = np.zeros_like(heatmap, dtype=bool)
        near_square[max(row - margin, 0):row + SQUARE + margin,
                    max(col - margin, 0):col + SQUARE + margin] = True
        fractions.append(heatmap[near_square].sum() / max(heatmap.sum(), 1e-9))
        peaks_near.append(bool(near_square.flat[np.argmax(heatmap)]))
    return np.array(fractions), peaks_near


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmap_peaks_on_the_square(explainer, method):
    images, corners = corner_images()
    heatmaps = explainer.heatmaps(images, method=method, class_index=1)
    assert heatmaps.shape == (2, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and not np.isnan(heatmaps).any()
    assert np.all(heatmaps.max(axis=(1, 2)) > 0.99)  # normalised per image

    fractions, peaks_near = mass_near_squares(heatmaps, corners)
    assert all(peaks_near)
    # The region is 14% of the image; an untrained model puts about half its map there.
    assert np.all(fractions > 0.7)

    # Evidence for "no square" is not on the square.
    other_class, _ = mass_near_squares(explainer.heatmaps(images, method, class_index=0), corners)
    assert np.all(other_class < 0.3)


def test_explainer_leaves_the_model_softmax(trained_model, explainer):
    images, _ = corner_images()
    before = trained_model.predict(images, verbose=0)
    explainer.heatmaps(images)
    after = trained_model.predict(images, verbose=0)
    np.testing.assert_allclose(before, after, rtol=1e-6)
    np.testing.assert_allclose(after.sum(axis=1), 1, rtol=1e-5)


def test_explainer_is_thread_safe(explainer):
    images, _ = corner_images()
    expected = explainer.heatmaps(images)
    results = [None] * 4

    def explain(i):
        results[i] = explainer.heatmaps(images)

    threads = [threading.Thread(target=explain, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_all_zero_map_stays_zero_and_bad_arguments_fail():
    # A dead last conv layer (zero kernel, zero bias) gives no evidence anywhere.
    explainer = Explainer(small_classifier(conv_initializer="zeros"), layer="last_conv")
    images, _ = corner_images()
    for method in ("gradcam", "gradcam++"):
        heatmaps = explainer.heatmaps(images, method=method)
        assert heatmaps.shape == (2, SIZE, SIZE) and np.all(heatmaps == 0)
    with pytest.raises(ValueError):
        explainer.heatmaps(images, method="scorecam")
    with pytest.raises(ValueError):
        Explainer(small_classifier(), layer="no_such_layer")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_compiled_backbone_gives_tf_keras_vis_own_heatmaps(trained_model, method):
    """The Explainer runs the layers below the explained one as a compiled
    function and stops the gradient there; its maps must equal tf-keras-vis
    run its own way (a linear clone of the model, called eagerly)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    # The trained model without its Lambda, which clone_model refuses.
    model = keras.Model.from_config(keras.Model(trained_model.layers[1].output, trained_model.output).get_config())
    model.set_weights(trained_model.get_weights())
    images = corner_images()[0] / 255.0
    visualizer = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus}[method]
    expected = visualizer(model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(1), images, penultimate_layer="last_conv", seek_penultimate_conv_layer=False)
    actual = Explainer(model, layer="last_conv").heatmaps(images, method=method)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    np.testing.assert_allclose(model.predict(images, verbose=0).sum(axis=1), 1, rtol=1e-5)  # still softmax


def test_overlay_keeps_image_shape_and_blends():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)  # not square
    heatmap = rng.random((7, 7)).astype(np.float32)
    blended = overlay(image, heatmap, alpha=0.4)
    assert blended.shape == image.shape and blended.dtype == np.uint8

    np.testing.assert_array_equal(overlay(image, heatmap, alpha=0), image)

    resized = cv2.resize(heatmap, (80, 50), interpolation=cv2.INTER_LINEAR)
    colour_bgr = cv2.applyColorMap(np.uint8(np.round(255 * resized)), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=1), colour_bgr[..., ::-1])

    # JET is blue at 0 and red at 1, in RGB order.
    hot = overlay(image, np.ones((4, 4)), alpha=1)
    cold = overlay(image, np.zeros((4, 4)), alpha=1)
    assert hot[0, 0, 0] > 100 and hot[0, 0, 2] == 0
    assert cold[0, 0, 2] > 100 and cold[0, 0, 0] == 0
    assert overlay(image[..., 0], heatmap).shape == image.shape
