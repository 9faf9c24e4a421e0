"""Tests for core.data.datasets: decoding, indexing/splitting, duplicate audit, tf.data.

The real COVID-CT dataset is used where it matters (official split, the
JPEG-in-.png files, the known cross-class duplicates); everything else runs on
small synthetic files in tmp_path.
"""
import io

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import ct_dataset
from PIL import Image

from core.data import splits
from core.data import datasets
from core.base.paths import data_dir
from core.data.audit import audit_duplicates
from core.data.image_cache import cache_images
from core.data.images import image_sizes, load_image, resize_image
from core.data.limits import ImageReadError
from core.training.pipeline import augmentation_layers, make_dataset

ROOT = data_dir()
needs_real_data = pytest.mark.skipif(
    not (ROOT / "COVID").is_dir(),
    reason=f"COVID-CT dataset not found at {ROOT} (set $COVIDCT_DATA)")

KNOWN_CROSS_CLASS = {("COVID/kjr-21-e24-p5-29.png", "NonCOVID/71%0.jpg"),
                     ("COVID/kjr-21-e24-p5-31.png", "NonCOVID/71%1.jpg")}


@pytest.fixture(scope="module")
def official_index():
    return datasets.index_dataset(ROOT)


def rgb_png(path, value=128, size=(20, 16)):
    Image.new("RGB", size, (value, value, value)).save(path)


# ---------------------------------------------------------------------------
# Indexing and splits
# ---------------------------------------------------------------------------

@needs_real_data
def test_official_split_on_covid_ct(official_index):
    index = official_index
    assert list(index.columns) == ["path", "relpath", "label", "y", "split", "patient_id", "source"]
    counts = datasets.split_counts(index)
    assert counts.loc[["train", "val", "test"], "COVID"].tolist() == [191, 60, 98]
    assert counts.loc[["train", "val", "test"], "NonCOVID"].tolist() == [234, 58, 105]
    assert counts.loc["total", "total"] == 746
    assert (index["y"] == (index["label"] == "COVID")).all()
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert index["relpath"].is_monotonic_increasing
    assert index["path"].str.startswith("/").all()
    assert "split lists" in index.attrs["split_source"]


@needs_real_data
def test_cross_validation_folds_validate_each_image_once_and_keep_patients_together(official_index):
    index = official_index
    pool = index.split != "test"
    validates = pd.Series(0, index=index.index)
    for fold in range(5):
        regrouped = splits.cross_validation_split(index, 5, fold, seed=0)
        assert (regrouped.loc[~pool, "split"] == "test").all()  # test stays aside
        assert set(regrouped.loc[pool, "split"]) == {"train", "val"}
        assert regrouped[pool].groupby("patient_id")["split"].nunique().max() == 1
        val = regrouped[regrouped.split == "val"]
        assert 0.4 < val.y.mean() < 0.6 and 100 <= len(val) <= 120  # stratified: about 543 / 5 each
        validates += regrouped.split == "val"
        assert f"fold {fold + 1} of 5" in regrouped.attrs["split_source"]
    assert (validates[pool] == 1).all() and (validates[~pool] == 0).all()
    assert (index.split[pool] != "test").all()  # the caller's index is left as it was
    with pytest.raises(ValueError, match="fold 5 of 5"):
        splits.cross_validation_split(index, 5, 5)


@needs_real_data
def test_patient_ids_come_from_both_metadata_files(official_index):
    patient = official_index.set_index("relpath")["patient_id"]
    # The xlsx lists this one without ".png".
    assert patient["COVID/2020.03.25.20043166-p17-78.png"] == "Patient 172"
    assert patient["NonCOVID/1%0.jpg"] == "crawled_patient_1"
    assert (official_index["patient_id"] != official_index["relpath"]).all()
    assert official_index["patient_id"].nunique() == 213 + 171


def make_synthetic_dataset(root):
    """Two classes, 12 patients each owning 1-4 images, metadata in a CSV whose
    names sometimes lack the extension; plus files that must be ignored."""
    rows = []
    for label in ("Sick", "Healthy"):
        (root / label).mkdir(parents=True)
        for patient in range(12):
            for slice_ in range(1 + patient % 4):
                name = f"{label[0]}{patient}_{slice_}.png"
                rgb_png(root / label / name)
                listed = name if slice_ else name[:-4]
                rows.append({"Image_Name": listed, "Patient-ID": f"{label}-p{patient}"})
    rgb_png(root / "Sick" / "orphan.png")  # in no metadata: its own group
    (root / "Sick" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Sick" / "._S0_0.png").write_bytes(b"\0\5\26\7")
    (root / "Healthy" / "notes.txt").write_text("not an image")
    (root / "meta").mkdir()
    pd.DataFrame(rows).to_csv(root / "meta" / "patients.csv", index=False)
    return root


def test_generated_split_is_grouped_stratified_and_seeded(tmp_path):
    root = make_synthetic_dataset(tmp_path / "ds")
    index = datasets.index_dataset(root, positive_class="Sick", seed=0)

    assert len(index) == 2 * sum(1 + p % 4 for p in range(12)) + 1
    assert not index["relpath"].str.contains("DS_Store|notes|/\\._").any()
    patient = index.set_index("relpath")["patient_id"]
    assert patient["Sick/S3_0.png"] == "Sick-p3"  # listed without ".png"
    assert patient["Sick/orphan.png"] == "Sick/orphan.png"
    assert (index["y"] == (index["label"] == "Sick")).all()

    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert set(index["split"]) == set(splits.SPLITS)
    assert (pd.crosstab(index["split"], index["label"]) > 0).all().all()

    pd.testing.assert_frame_equal(index, datasets.index_dataset(root, positive_class="Sick", seed=0))
    other = datasets.index_dataset(root, positive_class="Sick", seed=1)
    assert (other["split"] != index["split"]).any()
    assert other.groupby("patient_id")["split"].nunique().max() == 1


def test_same_file_name_in_both_classes_uses_each_class_table(tmp_path):
    # Numbered files in both folders, one metadata table per class (xlsx and csv).
    for label in ("COVID", "NonCOVID"):
        (tmp_path / label).mkdir()
        for i in range(4):
            rgb_png(tmp_path / label / f"{i}.png")
    (tmp_path / "meta").mkdir()
    pd.DataFrame({"File name": ["0", "1", "2", "3"], "Patient ID": ["c0", "c0", "c1", "c1"]}
                 ).to_excel(tmp_path / "meta" / "covid.xlsx", index=False)
    pd.DataFrame({"image name": ["0.png", "1.png", "2.png", "3.png"],
                  "patient id": ["n0", "n1", "n1", "n1"]}
                 ).to_csv(tmp_path / "meta" / "noncovid.csv")
    pd.DataFrame({"note": ["no usable columns"]}).to_csv(tmp_path / "meta" / "readme.csv")
    with pytest.warns(UserWarning, match=r"readme\.csv: no file-name and patient-id columns"):
        index = datasets.index_dataset(tmp_path, use_official_splits=False, test_fraction=0.5, val_fraction=0)
    assert index["patient_id"].tolist() == ["c0", "c0", "c1", "c1", "n0", "n1", "n1", "n1"]


def test_split_lists_with_crlf_and_blank_lines(tmp_path):
    root = tmp_path / "ds"
    for label in ("COVID", "NonCOVID"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            rgb_png(root / label / f"{i}.png")
    (root / "splits").mkdir()
    (root / "splits" / "trainCT_COVID.txt").write_bytes(b"0.png\r\n1.png\r\n\r\n")
    (root / "splits" / "testCT_COVID.txt").write_bytes(b"2.png")  # no final newline
    (root / "splits" / "trainCT_NonCOVID.txt").write_bytes(b"0.png\n1.png\n")
    (root / "splits" / "valCT_NonCOVID.txt").write_bytes(b"\n2.png")
    index = datasets.index_dataset(root)
    assert dict(zip(index["relpath"], index["split"])) == {
        "COVID/0.png": "train", "COVID/1.png": "train", "COVID/2.png": "test",
        "NonCOVID/0.png": "train", "NonCOVID/1.png": "train", "NonCOVID/2.png": "val"}
    # Without the lists: a grouped split is made instead.
    assert "by patient" in datasets.index_dataset(
        root, use_official_splits=False, test_fraction=0.5, val_fraction=0).attrs["split_source"]

    rgb_png(root / "NonCOVID" / "3.png")
    with pytest.raises(ValueError, match=r"1 images are in no split list.*NonCOVID/3\.png"):
        datasets.index_dataset(root)
    (root / "splits" / "valCT_NonCOVID.txt").write_bytes(b"2.png\r\n3.png\r\nmissing.png\r\n")
    with pytest.warns(UserWarning, match=r"left out 1 "):  # reported and skipped
        index = datasets.index_dataset(root)
    assert index.attrs["problems"] == [
        "NonCOVID/missing.png: listed in splits/valCT_NonCOVID.txt but not found"]
    assert index.set_index("relpath").loc["NonCOVID/3.png", "split"] == "val"


def test_class_folder_errors(tmp_path):
    for label in ("A", "B", "C"):
        (tmp_path / label).mkdir()
        rgb_png(tmp_path / label / "x.png")
    with pytest.raises(ValueError, match=r"exactly 2 class folders.*found 3"):
        datasets.index_dataset(tmp_path)
    (tmp_path / "C" / "x.png").unlink()
    with pytest.raises(ValueError, match=r"positive class 'COVID' is not one of"):
        datasets.index_dataset(tmp_path)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

@needs_real_data
def test_jpeg_named_png_decodes_like_pillow():
    path = ROOT / "COVID" / "2020.03.12.20034686-p17-91-1.png"
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"  # really a JPEG
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path.read_bytes(), name=path.name), expected)


def encode(image, format="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, format", [
    ("L", "PNG"), ("LA", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
    ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"), ("1", "BMP")])
def test_every_mode_becomes_uint8_rgb(mode, format):
    gradient = Image.fromarray(np.tile(np.arange(0, 240, 12, dtype=np.uint8), (16, 1)))
    image = load_image(encode(gradient.convert(mode), format), name=f"x.{format.lower()}")
    assert image.dtype == np.uint8 and image.shape == (16, 20, 3)


def test_grey_16_bit_is_scaled_by_its_range():
    values = np.linspace(1000, 5000, 16 * 20).astype(np.uint16).reshape(16, 20)
    image = load_image(encode(Image.fromarray(values)), name="ct16.png")
    assert image[..., 0].min() == 0 and image[..., 0].max() == 255
    assert (image[..., 0] == image[..., 2]).all()
    assert (np.diff(image[..., 0].ravel().astype(int)) >= 0).all()


def test_transparent_pixels_become_black():
    rgba = np.full((16, 16, 4), 255, dtype=np.uint8)
    rgba[0, 0, 3] = 0
    image = load_image(encode(Image.fromarray(rgba, "RGBA")), name="a.png")
    assert image[0, 0].tolist() == [0, 0, 0] and image[1, 1].tolist() == [255, 255, 255]


def ct_dicom(with_pixels=True):
    """16x16 CT slice: air -1000 HU, a lung patch -800 HU, a bone patch +400 HU."""
    if not with_pixels:
        return ct_dataset()
    hounsfield = np.full((16, 16), -1000, dtype=np.int16)
    hounsfield[1:3, 1:3] = -800
    hounsfield[5:7, 5:7] = 400
    return ct_dataset(hounsfield)


def test_dicom_lung_window(tmp_path):
    path = tmp_path / "slice.dcm"
    ct_dicom().save_as(path, enforce_file_format=True)
    image = load_image(path)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # W1500/L-600 spans -1350..150 HU: -800 -> 550/1500*255 = 93.5, +400 -> white.
    assert abs(int(image[1, 1, 0]) - 93.5) <= 1
    assert image[5, 5].tolist() == [255, 255, 255]
    assert abs(int(image[0, 0, 0]) - 59.5) <= 1  # air, -1000 HU
    soft_tissue = load_image(path, window=(400, 40))  # -160..240 HU
    assert soft_tissue[1, 1, 0] == 0 and soft_tissue[5, 5, 0] == 255

    # Without the 128-byte preamble and "DICM" magic it is still found by content.
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ct_dicom())
    assert buffer.getvalue()[128:132] != b"DICM"
    np.testing.assert_array_equal(load_image(buffer.getvalue(), name="raw.dcm"), image)


def test_dicom_without_pixels_names_the_file(tmp_path):
    path = tmp_path / "header_only.dcm"
    ct_dicom(with_pixels=False).save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"^header_only\.dcm: DICOM file has no pixel data"):
        load_image(path)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"patient 12, slice 40\nnot an image\n", "plain text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "not a readable image"),
])
def test_bad_files_raise_with_the_file_name(tmp_path, content, problem):
    path = tmp_path / "scan 7.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=rf"^scan 7\.png: .*{problem}"):
        load_image(path)
    with pytest.raises(ImageReadError, match=r"^upload\.png: "):
        load_image(content, name="upload.png")
    with pytest.raises(ValueError):  # callers may catch it as a ValueError
        load_image(content)


def test_missing_file_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match=r"^gone\.png: cannot read file"):
        load_image(tmp_path / "gone.png")


@needs_real_data
def test_cached_images_are_resized_and_report_progress(official_index):
    paths = official_index["path"].iloc[[0, 400, 745]]
    calls = []
    images = cache_images(paths, size=32, progress=lambda i, n: calls.append((i, n))).array()
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert calls[-1] == (3, 3)
    np.testing.assert_array_equal(images[1], resize_image(load_image(paths.iloc[1]), 32))


# ---------------------------------------------------------------------------
# Duplicate audit
# ---------------------------------------------------------------------------

@needs_real_data
def test_audit_finds_the_known_cross_class_pairs(official_index):
    pairs = audit_duplicates(official_index)
    assert list(pairs.columns) == ["relpath_a", "relpath_b", "label_a", "label_b", "split_a",
                                   "split_b", "kind", "distance", "fine_distance", "cross_class", "cross_split",
                                   "cross_source"]
    cross_class = pairs[pairs["cross_class"]]
    assert KNOWN_CROSS_CLASS <= set(zip(cross_class["relpath_a"], cross_class["relpath_b"]))
    assert (pairs["cross_class"] | pairs["cross_split"]).all()
    assert pairs["cross_class"].is_monotonic_decreasing  # cross-class first
    assert (pairs["kind"] == "near").all()  # COVID-CT has no byte-identical files
    # The look-alike slices of different patients are not confirmed; the two known copies
    # and two figures printed twice in one paper (checked by eye) are.
    assert set(zip(pairs["relpath_a"], pairs["relpath_b"])) == KNOWN_CROSS_CLASS | {
        ("COVID/2020.03.22.20040782-p24-1533-6.png", "COVID/2020.03.22.20040782-p25-1543.png"),
        ("COVID/2020.03.22.20040782-p24-1533-7.png", "COVID/2020.03.22.20040782-p25-1546.png")}


def test_audit_reports_only_pairs_that_cross(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    other = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    files = {"a.png": noise, "b.png": noise, "c.png": noise, "d.png": other}
    for name, pixels in files.items():
        Image.fromarray(pixels).save(tmp_path / name)
    index = pd.DataFrame({
        "path": [str(tmp_path / n) for n in files], "relpath": list(files),
        "label": ["X", "X", "Y", "X"], "split": ["train", "train", "test", "test"]})
    pairs = audit_duplicates(index)
    # a~b are in one class and split (no leak); d differs from all.
    assert list(zip(pairs["relpath_a"], pairs["relpath_b"])) == [("a.png", "c.png"), ("b.png", "c.png")]
    assert (pairs["kind"] == "exact").all() and (pairs["distance"] == 0).all()
    assert pairs["cross_class"].all() and pairs["cross_split"].all()


# ---------------------------------------------------------------------------
# tf.data pipeline
# ---------------------------------------------------------------------------

def test_augmentation_switches():
    def names(model):
        return [type(layer).__name__ for layer in model.layers]

    assert names(augmentation_layers()) == [
        "RandomRotation", "RandomZoom", "RandomContrast", "RandomFlip"]
    assert names(augmentation_layers(rotation=0, contrast=0)) == ["RandomZoom", "RandomFlip"]
    identity = augmentation_layers(rotation=0, zoom=0, contrast=0, flip=False)
    batch = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(identity(batch, training=True)), batch)


def test_rotation_fills_what_it_uncovers_with_the_mirrored_edge():
    bright = np.full((4, 32, 32, 3), 200.0, dtype="float32")
    rotate = dict(rotation=45, zoom=0, contrast=0, flip=False, seed=0)
    mirrored = np.asarray(augmentation_layers(**rotate)(bright, training=True))
    np.testing.assert_allclose(mirrored, 200.0, rtol=1e-5)  # no black corners: the mirrored edge is the image


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """10 random 16 px images as PNG files, through the image cache."""
    folder = tmp_path_factory.mktemp("tiny")
    pixels = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i}.png")
    cached = cache_images([folder / f"{i}.png" for i in range(10)], 16, root=folder / "cache")
    return pixels, cached, np.array([0, 1] * 5)


def collect(dataset):
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def test_eval_dataset_keeps_order_and_is_not_augmented(tiny_images):
    images, cached, labels = tiny_images
    augment = augmentation_layers(seed=1)
    dataset = make_dataset(cached, labels, batch_size=4, augment=augment)
    x, y = next(iter(dataset))
    assert x.shape == (4, 16, 16, 3) and x.dtype == "float32"
    assert y.shape == (4, 2) and y.dtype == "float32"
    all_x, all_y = collect(dataset)
    np.testing.assert_array_equal(all_x, images.astype("float32"))
    np.testing.assert_array_equal(all_y, np.eye(2)[labels])


def test_training_dataset_shuffles_and_augments(tiny_images):
    images, cached, labels = tiny_images
    plain = make_dataset(cached, labels, batch_size=4, training=True, seed=3)
    epoch_1, labels_1 = collect(plain)
    epoch_2, _ = collect(plain)
    # Same images and labels, shuffled, in another order each epoch.
    order = [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in epoch_1]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    np.testing.assert_array_equal(labels_1, np.eye(2)[labels[order]])
    assert not np.array_equal(epoch_1, epoch_2)
    # Seeded: a fresh pipeline repeats the first epoch's order.
    np.testing.assert_array_equal(collect(make_dataset(
        cached, labels, batch_size=4, training=True, seed=3))[0], epoch_1)

    augmented = make_dataset(cached, labels, batch_size=4, training=True, seed=3,
                                  augment=augmentation_layers(seed=1))
    x, _ = collect(augmented)
    assert x.dtype == np.float32 and x.shape == (10, 16, 16, 3)
    assert not np.array_equal(x, epoch_1)
    assert x.min() >= 0 and x.max() <= 255


def test_intensity_jitter_changes_training_slices_only(tiny_images):
    images, cached, labels = tiny_images
    only_intensity = {"rotation": 0, "zoom": 0, "contrast": 0, "flip": False}
    augment = augmentation_layers(**only_intensity, seed=1, intensity_jitter=1.0)
    assert [type(layer).__name__ for layer in augment.layers] == ["RandomIntensity"]
    trained, _ = collect(make_dataset(cached, labels, batch_size=4, training=True, seed=3, augment=augment))
    plain, _ = collect(make_dataset(cached, labels, batch_size=4, training=True, seed=3))
    assert trained.shape == plain.shape and trained.min() >= 0 and trained.max() <= 255
    changed = np.abs(trained - plain).mean(axis=(1, 2, 3))
    assert (changed > 1).all()  # every training slice: another window, gamma, blur or compression
    evaluated, _ = collect(make_dataset(cached, labels, batch_size=4, augment=augment))
    np.testing.assert_array_equal(evaluated, images.astype("float32"))  # evaluation: untouched
    batch = images[:4].astype("float32")
    np.testing.assert_array_equal(np.asarray(augment(batch, training=False)), batch)
    off = augmentation_layers(**only_intensity, intensity_jitter=0.0)
    assert [type(layer).__name__ for layer in off.layers] == ["Identity"]


def test_intensity_jitter_keeps_a_slices_anatomy():
    """A gentle jitter moves grey levels, not structures: bright stays brighter than dark."""
    slice_ = np.zeros((1, 32, 32, 3), "float32")
    slice_[:, 8:24, 8:24] = 200.0
    jittered = np.asarray(augmentation_layers(rotation=0, zoom=0, contrast=0, flip=False, seed=0,
                                              intensity_jitter=0.3)(slice_, training=True))
    assert jittered[0, 16, 16].mean() > jittered[0, 2, 2].mean() + 100


def test_image_sizes_reads_headers_of_png_jpeg_dicom_and_marks_unreadable(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("L", (20, 50)).save(tmp_path / "b.png", format="JPEG")  # JPEG named .png
    (tmp_path / "c.png").write_text("not an image")
    ds = ct_dataset(np.zeros((12, 16), np.int16))
    ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)

    sizes = image_sizes([tmp_path / n for n in ("a.png", "b.png", "c.png", "d.dcm")])
    assert sizes.columns.tolist() == ["width", "height"]
    assert sizes.iloc[[0, 1, 3]].to_numpy().tolist() == [[40, 30], [20, 50], [16, 12]]
    assert sizes.iloc[2].isna().all()


@needs_real_data
def test_image_sizes_of_covid_ct_match_the_manifest():
    manifest = pd.read_csv(ROOT / "manifest.csv")
    sizes = image_sizes([ROOT / p for p in manifest["path"]])
    np.testing.assert_array_equal(sizes["width"], manifest["width"])
    np.testing.assert_array_equal(sizes["height"], manifest["height"])
