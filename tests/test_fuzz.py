"""Fuzz the readers and the run folders with a generated corpus (seeded, so
every run of the test sees the same 91 inputs): malformed PNG, JPEG,
GIF, BMP, TIFF and DICOM files, junk, and damaged run folders. For every
input: no exception but ImageReadError / a listed problem, a reason that
names the file, bounded CPU time; and a batch goes on past its bad inputs."""
import io
import time

import numpy as np
import pytest
from dicom_factory import ct_dataset, dicom_bytes
from PIL import Image

from core.data import datasets
from core.runs import catalogue
from core.cli.main import main
from core.data.images import check_image, load_image
from core.data.limits import ImageReadError

CPU_SECONDS = 3.0  # per input; the largest, 2 MB of DICOM header, takes about 1 s
rng = np.random.default_rng(19)


def encoded(format, **options):
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


def dicom_with(text_from: bytes, text_to: bytes) -> bytes:
    """A valid CT DICOM with one value's bytes replaced (same length), e.g.
    RescaleSlope "1.5" -> "abc": pydicom refuses to write such values itself."""
    ds = ct_dataset(np.arange(32 * 32, dtype=np.int16).reshape(32, 32) - 1000)
    ds.RescaleSlope, ds.WindowWidth = "1.5", "1500"
    # A fixed UID: a random one may itself contain "1500" and break the one-match rule
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    content = dicom_bytes(ds)
    assert content.count(text_from) == 1, text_from
    return content.replace(text_from, text_to)


def mutations(name, content):
    """Cuts, flipped bytes, zeroed runs and inserted junk of one valid file."""
    cases = {}
    for i, fraction in enumerate((0.0005, 0.1, 0.5, 0.9)):
        cases[f"cut{i}-{name}"] = content[:max(1, int(len(content) * fraction))]
    for i in range(4):
        flipped = bytearray(content)
        for at in rng.integers(0, len(content), 1 + 4 * i):
            flipped[at] ^= int(rng.integers(1, 256))
        cases[f"flip{i}-{name}"] = bytes(flipped)
    at = int(rng.integers(8, len(content) // 2))
    cases[f"zeros-{name}"] = content[:at] + bytes(64) + content[at + 64:]
    cases[f"junk-{name}"] = content[:at] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes() + content[at:]
    return cases


def image_corpus() -> dict:
    valid = {"png": encoded("PNG"), "jpg": encoded("JPEG", quality=90), "gif": encoded("GIF"),
             "bmp": encoded("BMP"), "tif": encoded("TIFF"), "dcm": dicom_with(b"1500", b"1500")}
    corpus = {}
    for extension, content in valid.items():
        corpus.update({f"{case}.{extension}": bad for case, bad in mutations(extension, content).items()})
    corpus.update({
        "slope-abc.dcm": dicom_with(b"1.5 ", b"abc "),  # a non-numeric RescaleSlope
        "width-xyz.dcm": dicom_with(b"1500", b"xyz "),
        "no-preamble.dcm": dicom_with(b"1500", b"1500")[132:],
        "zeros-8mb.png": bytes(8 * 2**20),  # was a 10 s forced DICOM parse per 10 MB
        "dicm-then-zeros.dcm": bytes(128) + b"DICM" + bytes(4 * 2**20),  # header over the cap
        "group8-then-zeros.dcm": b"\x08\x00" + bytes(4 * 2**20),
        "text.png": b"GIF89a is what it says, but it is text",
        "one-byte.jpg": b"\xff",
        "png-signature-only.png": b"\x89PNG\r\n\x1a\n",
    })
    return corpus


def test_every_malformed_image_is_refused_by_name_in_bounded_time(tmp_path):
    corpus = image_corpus()
    assert len(corpus) >= 60
    decoded, refused = [], []
    for name, content in corpus.items():
        (tmp_path / name).write_bytes(content)
        for read in (check_image, load_image):
            started = time.process_time()
            try:
                image = read(tmp_path / name)
            except ImageReadError as error:
                refused.append(name)
                message = str(error)
                assert message.startswith(f"{name}: ") and "\n" not in message, message
            else:
                if read is load_image:  # a flipped byte in pixel data can still decode
                    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                    decoded.append(name)
            assert time.process_time() - started < CPU_SECONDS, name
    assert "slope-abc.dcm" in refused and "zeros-8mb.png" in refused and "no-preamble.dcm" in decoded
    assert len(set(refused)) >= 40


def test_a_batch_goes_on_past_its_bad_files(tmp_path):
    """index_dataset reads a folder of good and bad files: each bad one is left
    out with its reason, every good one is indexed."""
    corpus = image_corpus()
    good = []
    for label in ("COVID", "NonCOVID"):
        (tmp_path / label).mkdir()
        for i in range(4):
            (tmp_path / label / f"good{i}.png").write_bytes(encoded("PNG"))
            good.append(f"{label}/good{i}.png")
    bad_names = list(corpus)[::2]
    for i, name in enumerate(bad_names):
        (tmp_path / ("COVID", "NonCOVID")[i % 2] / name).write_bytes(corpus[name])
    with pytest.warns(UserWarning, match="left out"):
        index = datasets.index_dataset(tmp_path, use_official_splits=False, test_fraction=0.5, val_fraction=0)
    assert set(good) <= set(index.relpath)
    for problem in index.attrs["problems"]:
        relpath, reason = problem.split(": ", 1)
        assert relpath.split("/", 1)[1] in corpus and reason


def damaged_run_folders(template_files: dict) -> dict:
    """Each file of a completed run cut, flipped, emptied or swapped for another
    JSON type, one file per run folder."""
    cases = {}
    for file_name, content in template_files.items():
        cases[f"{file_name}-empty"] = (file_name, b"")
        for i, fraction in enumerate((0.3, 0.7)):
            cases[f"{file_name}-cut{i}"] = (file_name, content[:int(len(content) * fraction)])
        flipped = bytearray(content)
        for at in rng.integers(0, len(content), 6):
            flipped[at] = int(rng.choice(list(b'0123456789",:{}[]ab-')))
        cases[f"{file_name}-flipped"] = (file_name, bytes(flipped))
        if file_name.endswith(".json"):
            cases[f"{file_name}-list"] = (file_name, b"[1, 2, 3]")
            cases[f"{file_name}-null"] = (file_name, b"null")
    return cases


def test_damaged_run_folders_never_break_listing_or_the_cli(tmp_path, monkeypatch, capsys):
    from test_run_check import completed_run

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    runs_root = tmp_path / "runs"
    template = completed_run(runs_root, "0-template", tmp_path)
    files = {name: (template / name).read_bytes()
             for name in ("config.json", "status.json", "metrics.json", "predictions.csv")}
    cases = damaged_run_folders(files)
    assert len(cases) >= 20
    for case, (file_name, content) in cases.items():
        run_dir = runs_root / case
        run_dir.mkdir()
        for name, original in files.items():
            (run_dir / name).write_bytes(content if name == file_name else original)

    started = time.process_time()
    listed = {run["id"]: run for run in catalogue.list_runs()}  # never raises
    assert time.process_time() - started < CPU_SECONDS * len(cases)
    assert set(listed) == {*cases, template.name}
    assert main(["runs"]) == 0
    capsys.readouterr()
    for case, (file_name, _) in cases.items():
        problems = listed[case]["problems"]
        assert all(p.split(": ", 1)[0] in files for p in problems), problems
        code = main(["evaluate", "--run", case, "--n-boot", "20"])
        out, err = capsys.readouterr()
        if problems:
            assert code == 2 and err.startswith(f"error: {runs_root / case / problems[0].split(': ')[0]}: ")
        else:  # harmless damage (a flipped digit in a probability, a cut config): evaluated
            assert code == 0, err
        assert "Traceback" not in out + err
    damaged = [case for case in cases if listed[case]["problems"]]
    assert len(damaged) >= 0.75 * len(cases)
