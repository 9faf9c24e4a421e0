"""Lung-field cropping: it finds the lungs of a drawn chest and of real CT
slices, leaves non-chest images whole, and every path (training images,
prediction, Grad-CAM) sees the same crop."""
import cv2
import numpy as np
import pytest

from core.data import lung
from core.data.images import load_image
from core.data.image_cache import cache_images


def phantom(size: int = 256) -> np.ndarray:
    """A lung-window chest drawn by hand: black air, a bright body, two dark
    lungs with a bright lesion at one base, a white caption in a corner and a
    white arrow at the right edge (what COVID-CT's paper figures carry)."""
    image = np.zeros((size, size), np.uint8)
    cv2.ellipse(image, (128, 130), (100, 80), 0, 0, 360, 200, -1)      # body
    cv2.ellipse(image, (90, 125), (30, 50), 0, 0, 360, 60, -1)         # right lung
    cv2.ellipse(image, (166, 125), (30, 50), 0, 0, 360, 60, -1)        # left lung
    cv2.circle(image, (166, 165), 10, 180, -1)                         # dense lesion at the left base
    cv2.putText(image, "Fig. 2", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)
    cv2.arrowedLine(image, (250, 30), (235, 45), 255, 3)
    return np.repeat(image[:, :, None], 3, axis=2)


def test_the_crop_keeps_both_lungs_and_drops_the_caption_and_arrow():
    image = phantom()
    top, bottom, left, right = lung.lung_box(image)
    # Both lungs (x 60..196, y 75..175) inside, with the margin.
    assert left <= 60 and right >= 196 and top <= 75 and bottom >= 175
    # The caption (top-left corner) and the arrow (right edge) outside.
    assert top > 25 and left > 5 and right < 235
    cropped = lung.crop_to_lungs(image)
    assert cropped.shape == (bottom - top, right - left, 3)


def test_no_lung_no_crop():
    flat = np.full((128, 128, 3), 120, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    for image in (flat, noise):
        assert lung.lung_box(image) is None
        assert lung.crop_to_lungs(image) is image


def test_lungs_are_found_on_real_slices(data_dir):
    paths = sorted((data_dir / "COVID").glob("*.png"))[:10] + sorted((data_dir / "NonCOVID").glob("*.jpg"))[:10]
    found = 0
    for path in paths:
        image = load_image(path)
        box = lung.lung_box(image)
        if box is None:
            continue
        found += 1
        top, bottom, left, right = box
        # A real crop: smaller than the figure, yet most of it (lungs fill much of a chest slice).
        area = (bottom - top) * (right - left) / (image.shape[0] * image.shape[1])
        assert 0.2 < area <= 1.0
    assert found >= 18


def test_training_prediction_and_gradcam_see_the_same_crop(trained_run, data_dir):
    from core.inference.predict import Predictor

    path = sorted((data_dir / "NonCOVID").glob("*.jpg"))[0]
    image = load_image(path)
    expected = cv2.resize(lung.crop_to_lungs(image), (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(cache_images([path], 64, lung_crop=True).array()[0], expected)

    predictor = Predictor.from_run(trained_run)
    predictor.lung_crop = True
    assert np.array_equal(predictor.prepare(image), expected.astype("float32"))
    assert predictor.gradcam_overlay(image).shape == lung.crop_to_lungs(image).shape
    predictor.lung_crop = False
    assert predictor.gradcam_overlay(image).shape == image.shape


@pytest.mark.parametrize("lung_crop", [False, True])
def test_the_setting_reaches_the_predictor(trained_run, tmp_path, lung_crop):
    import json
    import shutil

    from core.inference.predict import Predictor

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "lung_crop": lung_crop}))
    assert Predictor.from_run(run_dir).lung_crop is lung_crop


def test_masking_keeps_the_lungs_and_blanks_the_rest():
    image = phantom()
    masked = lung.mask_outside_lungs(image)
    lungs = lung.lung_mask(image)
    assert np.array_equal(masked[lungs], image[lungs])  # the lungs (and the lesion they close over) stay
    assert masked[165, 166].tolist() == image[165, 166].tolist()  # the lesion at the base (row, column)
    for y, x in ((15, 20), (40, 240), (200, 128)):  # the caption, the arrow, the body below the lungs
        assert image[y, x].any() and not masked[y, x].any()
    assert lung.lung_view(image, crop=False, mask=True).tolist() == masked.tolist()
    cropped = lung.crop_to_lungs(image)
    assert np.array_equal(lung.lung_view(image, crop=True, mask=True), lung.mask_outside_lungs(cropped))
    flat = np.full((128, 128, 3), 120, np.uint8)
    assert lung.mask_outside_lungs(flat) is flat  # no lungs found: the slice whole


def outside_changed(image: np.ndarray) -> np.ndarray:
    """The phantom with other things outside the lungs: another caption, no arrow, bright bone in the body."""
    changed = image.copy()
    changed[:30, :80] = 0
    cv2.putText(changed, "B", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    changed[25:50, 230:] = 0
    changed[195:205, 100:160] = 250  # the body under the lungs, past the mask's widening
    assert not np.array_equal(changed, image)
    return changed


def test_a_masked_run_decides_from_the_lungs_only(trained_run, tmp_path, data_dir):
    import json
    import shutil

    from core.inference.predict import Predictor

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "lung_mask": True}))
    predictor = Predictor.from_run(run_dir)
    assert predictor.lung_mask
    image, changed = phantom(), outside_changed(phantom())
    expected = cv2.resize(lung.mask_outside_lungs(image), (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(predictor.prepare(image), expected.astype("float32"))  # it predicts on masked input
    assert np.array_equal(predictor.prepare(changed), predictor.prepare(image))
    first, second = predictor.predict_images([image, changed], ["phantom", "changed"])
    assert first.raw_probability == pytest.approx(second.raw_probability, abs=1e-6)
    assert np.allclose(predictor.gradcam(image), predictor.gradcam(changed), atol=1e-5)
    assert np.array_equal(predictor.lung_fields(image), lung.lung_mask(image))  # found before masking
    # Training reads the same input through the image cache, under its own name.
    path = min((data_dir / "NonCOVID").glob("*.jpg"))
    masked_entry = cache_images([path], 64, lung_mask=True, root=tmp_path / "cache")
    assert np.array_equal(masked_entry.array()[0], cv2.resize(lung.mask_outside_lungs(load_image(path)), (64, 64),
                                                              interpolation=cv2.INTER_AREA))
    assert masked_entry.entries != cache_images([path], 64, root=tmp_path / "cache").entries
