"""Fuzz the readers and the run folders with a generated corpus (seeded, so
every run of the test sees the same inputs): malformed PNG, JPEG, GIF, BMP,
TIFF and DICOM files, junk, and damaged run folders (91 inputs); then the
hostile classes of issue 29 (HOSTILE counts them, about 400): generated
names, special files, non-finite values in pixels and headers, every run file
nested or mistyped, NIfTI spacing and affine extremes, option values outside
their meaning. For every input: no exception but ImageReadError / a listed
problem / exit code 2, one line that names the file, bounded CPU time (and
memory, for the readers); and a batch, or the other runs, go on past it."""
import contextlib
import gzip
import io
import json
import os
import signal
import socket
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dicom_factory import ct_dataset, dicom_bytes
from PIL import Image

from core.base import files
from core.cli.common import shown
from core.data import datasets, scans
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


# ---------------------------------------------------------------------------
# Hostile inputs by class (issue 29): names, special files, non-finite values,
# run files nested or mistyped, NIfTI spacing and affine, option values. Each
# input ends in one line naming it (escaped by the CLI), a refusal or a read
# within the limits, bounded CPU time and memory, and the intact run still
# listed and answering. HOSTILE counts what each class generated.
# ---------------------------------------------------------------------------

HOSTILE = {}
HOSTILE_SEED = 29  # each class draws from its own generator: the same inputs whichever tests run
HOSTILE_CPU_SECONDS = 1.0   # per input: most never reach a decoder, none TensorFlow
HOSTILE_PEAK_BYTES = 48 * 2**20  # traced memory one reader may take for one input
NAME_PIECES = ["\n", "\r", "\t", "\x1b[2J", "\u202e", "\u2028", "\\", "'", '"', "*", "?", "[", " ", "-", "..",
               "é", "\U0001f600", "%s", "$(x)", b"\xff", b"\xc3(", b"\x80"]


def hostile_names(count: int, rng) -> list[str]:
    """File names a file system allows (no '/' or NUL, at most 255 bytes) and
    a terminal or a parser does not: controls, bidi overrides, bytes that are not UTF-8."""
    names = set()
    while len(names) < count:
        pieces = [NAME_PIECES[i] for i in rng.integers(0, len(NAME_PIECES), int(rng.integers(1, 6)))]
        raw = b"".join(p if isinstance(p, bytes) else p.encode() for p in pieces) + b"x"
        raw = (raw * int(rng.integers(1, 40)))[:250] if rng.random() < 0.2 else raw
        names.add(os.fsdecode(raw + b".png"))
    return sorted(names)


def one_line(text: str) -> str:
    line = shown(text)
    assert "\n" not in line and "\r" not in line and "\t" not in line and "\x1b" not in line, line
    return line


@contextlib.contextmanager
def bounded_input(name, memory=True):
    """CPU time and traced memory of reading one hostile input, and a minute's alarm: a FIFO must never hang."""
    signal.alarm(60)
    if memory:
        tracemalloc.start()
    started = time.process_time()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] if memory else 0
        if memory:
            tracemalloc.stop()
        signal.alarm(0)
        assert time.process_time() - started < HOSTILE_CPU_SECONDS and peak < HOSTILE_PEAK_BYTES, (name, peak)


def read_or_refuse(read, path, name):
    """read(path) in bounds; an ImageReadError's one line starts with `name`."""
    with bounded_input(name):
        try:
            return read(path)
        except ImageReadError as error:
            assert one_line(str(error)).startswith(shown(name)), str(error)
            return None


def test_hostile_names_are_read_listed_and_printed_one_line_each(tmp_path, monkeypatch, capsys):
    from test_run_check import completed_run

    names = hostile_names(40, np.random.default_rng(HOSTILE_SEED))
    HOSTILE["names"] = 3 * len(names)
    junk, dataset = tmp_path / "junk", tmp_path / "data"
    junk.mkdir()
    for label in ("COVID", "NonCOVID"):
        (dataset / label).mkdir(parents=True)
    for i, name in enumerate(names):  # a junk file, a slice in a dataset, a run folder: each named so
        (junk / name).write_bytes(b"<html>not\nan image</html>")
        assert read_or_refuse(load_image, junk / name, name) is None
        (dataset / ("COVID", "NonCOVID")[i % 2] / name).write_bytes(encoded("PNG"))
    text = [name for name in names if name.encode("utf-8", "surrogatepass") == os.fsencode(name)
            and not name.startswith(".")]  # hidden files (macOS "._x.png") are not images
    with pytest.warns(UserWarning, match="left out"):  # a name that is not UTF-8 text: no table holds it
        index = datasets.index_dataset(dataset, use_official_splits=False, test_fraction=0.3, val_fraction=0.2)
    assert sorted(index.relpath.str.split("/").str[1]) == text and len(text) < len(names)
    assert all("its name is not UTF-8 text" in one_line(p) for p in index.attrs["problems"])
    table = tmp_path / "index.csv"
    files.write_csv(table, index[["relpath"]])  # the machine-readable form keeps every name as it is
    assert sorted(pd.read_csv(table).relpath) == sorted(index.relpath)

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    runs_root = tmp_path / "artifacts" / "runs"
    intact = completed_run(runs_root, "0-intact", tmp_path)
    for name in names:
        (runs_root / name).mkdir()
        (runs_root / name / "config.json").write_text('{"seed": -1}')
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    damaged = out[out.index("Damaged runs:"):].rstrip("\n").split("\n")[1:]
    # a run's id is its folder's name as text (files.as_text: bytes that are not UTF-8 as \xff), then escaped
    assert sorted(line[2:].split(": config.json: ")[0] for line in damaged) == \
        sorted(shown(files.as_text(name)) for name in names)
    assert main(["evaluate", "--n-boot", "20"]) == 0 and f"run {intact.name}" in capsys.readouterr().out


# Each kind of file one may not read, named as an image, with the reason a folder's listing gives.
SPECIAL = {"fifo.png": "a FIFO", "socket.png": "a socket", "zero.png": "a link to outside",
           "loop.png": "cannot read", "broken.png": "cannot read", "out.png": "a link to outside",
           "up.png": "a link to outside"}


def make_special(path: Path, outside: Path) -> None:
    if path.name == "fifo.png":
        os.mkfifo(path)
    elif path.name == "socket.png":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    else:
        path.symlink_to({"zero.png": Path("/dev/zero"), "loop.png": path, "broken.png": path.parent / "gone",
                         "out.png": outside, "up.png": path.parent.parent}[path.name])


def test_special_files_are_refused_wherever_a_path_is_opened(tmp_path, monkeypatch):
    from test_run_check import completed_run

    outside = tmp_path / "secret.png"
    outside.write_bytes(encoded("PNG"))
    (tmp_path / "slices" / "folder.png").mkdir(parents=True)
    for name in [*SPECIAL, "folder.png"]:  # given one by one: refused, never blocking
        if name != "folder.png":
            make_special(tmp_path / "slices" / name, outside)
        with bounded_input(name):
            if name == "out.png":  # a file given by its path may be a link anywhere: no folder to stay in
                assert load_image(tmp_path / "slices" / name).shape == (40, 48, 3)
                continue
            with pytest.raises(ImageReadError, match=rf"^{name}: "):
                load_image(tmp_path / "slices" / name)
    for name, reason in SPECIAL.items():  # in a scan folder, and in a dataset's class folder
        scan = tmp_path / f"scan-{name}"
        scan.mkdir()
        (scan / "1.png").write_bytes(encoded("PNG"))
        make_special(scan / name, outside)
        with bounded_input(name):
            with pytest.raises(ImageReadError, match=rf"^scan-{name}/{name}: {reason}"):
                scans.read_path(scan)
        data = tmp_path / f"data-{name}"
        for label in ("COVID", "NonCOVID"):
            (data / label).mkdir(parents=True)
            for i in range(4):
                (data / label / f"{i}.png").write_bytes(encoded("PNG"))
        make_special(data / "COVID" / name, outside)
        with pytest.warns(UserWarning, match="left out"):
            index = datasets.index_dataset(data, use_official_splits=False, test_fraction=0.5, val_fraction=0)
        assert len(index) == 8 and index.attrs["problems"][0].startswith(f"COVID/{name}: {reason}")

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    runs_root = tmp_path / "artifacts" / "runs"
    completed_run(runs_root, "0-intact", tmp_path)
    for file_name in ("config.json", "metrics.json", "predictions.csv", "model.keras"):  # as run files
        for kind in ("fifo", "folder", "out"):
            run_dir = completed_run(runs_root, f"{kind}-{file_name}", tmp_path)
            (run_dir / file_name).unlink()
            {"fifo": os.mkfifo, "folder": Path.mkdir, "out": lambda p: p.symlink_to(outside)}[kind](run_dir / file_name)
    with bounded_input("runs", memory=False):
        listed = {run["id"]: run for run in catalogue.list_runs()}
    assert len(listed) == 13
    for run_id, run in listed.items():
        file_name = run_id.split("-", 3)[-1]
        if file_name != "intact":
            assert run["problems"] and run["problems"][0].startswith(f"{file_name}: "), (run_id, run["problems"])
    HOSTILE["special files"] = 3 * len(SPECIAL) + 1 + 12


def nifti(volume, zooms=(1, 1, 1), affine=None, slope=None) -> bytes:
    finite = np.nan_to_num(zooms, nan=1, posinf=1, neginf=1)
    content = nib.Nifti1Image(volume, np.diag([*finite, 1])).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(content[:348]), check=False)
    # nibabel writes these from the affine, and refuses an affine or a scaling that is not finite: set what a
    # hostile file holds, field by field
    header["pixdim"][1:4] = zooms
    if affine is not None:
        header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
        header["sform_code"], header["qform_code"] = 2, 0
    if slope is not None:
        header["scl_slope"], header["scl_inter"] = slope
    return header.binaryblock + content[348:]


def test_non_finite_values_in_pixels_and_headers_are_refused_by_name():
    def volume_with(value):
        volume = np.full((24, 24, 3), -1000, np.float32)
        volume[tuple(rng.integers(0, 3, 3))] = value
        return volume

    rng = np.random.default_rng(HOSTILE_SEED)
    plain = np.full((24, 24, 3), -1000, np.int16)
    cases = {}  # file name: its content
    for i, value in enumerate((np.nan, np.inf, -np.inf)):
        cases[f"voxel{i}.nii"] = nifti(volume_with(value))
        cases[f"slope{i}.nii"] = nifti(plain, slope=(value, 0))
        cases[f"inter{i}.nii"] = nifti(plain, slope=(1, value))
        for axis in range(3):
            cases[f"pixdim{i}{axis}.nii"] = nifti(plain, tuple(value if a == axis else 1.0 for a in range(3)))
        affine = np.eye(4)
        affine[rng.integers(0, 3), rng.integers(0, 4)] = value
        cases[f"affine{i}.nii"] = nifti(plain, affine=affine)
        cases[f"slope{i}.dcm"] = dicom_with(b"1.5 ", {np.nan: b"nan ", np.inf: b"inf ", -np.inf: b"-inf"}[value])
        tiff = io.BytesIO()
        Image.fromarray(np.where(np.eye(32) > 0, value, 1.0).astype(np.float32), mode="F").save(tiff, "TIFF")
        cases[f"float{i}.tif"] = tiff.getvalue()
    HOSTILE["non-finite values"] = len(cases)
    refused = 0
    for name, content in cases.items():
        read = (lambda: scans.read_nifti(content, name)) if name.endswith(".nii") else lambda: load_image(content, name)
        with bounded_input(name):
            try:
                result = read()
            except ImageReadError as error:  # e.g. "voxel0.nii: NIfTI voxel values of slice 2 include NaN or infinity"
                assert one_line(str(error)).startswith(f"{name}: "), str(error)
                refused += 1
            else:  # nibabel reads a NaN scaling as none: what comes out is finite grey
                slices = result.slices if name.endswith(".nii") else [result]
                assert all(s.dtype == np.uint8 for s in slices), name
    assert refused >= len(cases) - 3


def run_file_templates(run_dir: Path) -> dict:
    """A valid example of each JSON file of a run, and of the deployed record."""
    from core.inference import calibration

    return {"config.json": json.loads((run_dir / "config.json").read_text()),
            "status.json": json.loads((run_dir / "status.json").read_text()),
            "metrics.json": json.loads((run_dir / "metrics.json").read_text()),
            "calibration.json": calibration.for_run(run_dir).to_dict(),
            "scan.json": {"aggregation": "mean", "threshold": 0.5, "chosen_on": "validation patients",
                          "caveat": None, "comparison": [], "test_patients": None},
            "ood.json": {"k": 5, "percentile": 99.0, "threshold": 0.3, "n_train": 10, "n_val": 5},
            "deployed.json": {"run": run_dir.name, "deployed_at": "2026-01-01", "confirmed_despite": []}}


MISTYPED = ([0.3], "text", None, float("nan"), float("inf"), -1, 10**30, {"nested": {"deeper": [1]}}, True)


def json_mutations(template: dict, rng) -> dict:
    """The file nested past the bound, and each field given values of other types and ranges."""
    cases = {f"depth{depth}": "[" * depth + "]" * depth for depth in (33, 1000, 100_000)}
    cases["deep-field"] = json.dumps({**template, "x": 1})[:-1].replace('"x": 1', '"x": ' + "[" * 40 + "]" * 40) + "}"
    for field in template:
        for value in rng.choice(np.array(MISTYPED, dtype=object), 2, replace=False):
            cases[f"{field}={json.dumps(value)}"] = json.dumps({**template, field: value})
    return cases


def test_every_run_file_nested_or_mistyped_isolates_its_run(tmp_path, monkeypatch, capsys):
    from test_run_check import completed_run

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    runs_root = tmp_path / "artifacts" / "runs"
    template = completed_run(runs_root, "0-template", tmp_path)
    templates = run_file_templates(template)
    cases, rng = {}, np.random.default_rng(HOSTILE_SEED)
    for file_name, valid in templates.items():
        for case, text in json_mutations(valid, rng).items():
            if file_name == "deployed.json":
                cases[(file_name, case)] = text
                continue
            run_dir = completed_run(runs_root, f"{len(cases):03d}", tmp_path)
            for other in ("calibration.json", "scan.json", "ood.json"):
                files.write_json(run_dir / other, templates[other])
            (run_dir / file_name).write_text(text)
            cases[(file_name, case)] = run_dir
    HOSTILE["run files nested or mistyped"] = len(cases)

    with bounded_input("runs", memory=False):
        listed = {run["id"]: run for run in catalogue.list_runs()}
    assert main(["runs"]) == 0 and "Traceback" not in capsys.readouterr().err
    damaged = 0
    for (file_name, case), run_dir in cases.items():
        if file_name == "deployed.json":
            continue
        problems = listed[run_dir.name]["problems"]
        assert all(p.split(": ", 1)[0] in templates or p.startswith("predictions.csv") for p in problems), problems
        code = main(["evaluate", "--run", run_dir.name, "--n-boot", "20"])
        out, err = capsys.readouterr()
        if problems:
            damaged += 1
            assert code == 2 and one_line(err.strip()).startswith(f"error: {run_dir / file_name}: "), (case, err)
        else:  # a value of the right type after all (a string for a note, null where null is allowed)
            assert code == 0, (case, err)
    assert damaged >= 0.8 * sum(1 for file_name, _ in cases if file_name != "deployed.json")

    for (file_name, case), text in cases.items():  # the deployed record, one at a time
        if file_name == "deployed.json":
            (tmp_path / "artifacts" / "deployed.json").write_text(text)
            assert main(["predict", "x.png"]) == 2
            line = one_line(capsys.readouterr().err.strip())
            assert "deployed.json" in line or "x.png" in line or "model.keras" in line, (case, line)
    (tmp_path / "artifacts" / "deployed.json").unlink()
    assert main(["evaluate", "--n-boot", "20"]) == 0  # the newest intact completed run still answers
    assert "run " in capsys.readouterr().out


def test_nifti_spacing_and_affine_extremes_stay_within_the_limits(monkeypatch):
    from core.data import limits

    monkeypatch.setattr(scans, "MAX_VOXELS", 2_000_000)  # small limits: an accepted volume is read at once
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 1_000_000)
    read, refused, rng = 0, 0, np.random.default_rng(HOSTILE_SEED)
    for case in range(40):
        shape = tuple(int(n) for n in rng.integers(16, 96, 3))
        zooms = tuple(float(z) for z in 10.0 ** rng.uniform(-6, 6, 3))
        affine = np.diag([*zooms, 1.0])[:, [*rng.permutation(3), 3]] * np.r_[rng.choice([-1, 1], 3), 1]
        affine[:3, 3] = rng.uniform(-1e6, 1e6, 3)
        content = gzip.compress(nifti(np.full(shape, -1000, np.int16), zooms, affine=affine))
        result = read_or_refuse(lambda c: scans.read_nifti(c, f"extreme{case}.nii.gz"), content,
                                f"extreme{case}.nii.gz")
        if result is None:
            refused += 1
            continue
        read += 1
        assert sum(s.size for s in result.slices) <= 2_000_000 and max(s.size for s in result.slices) <= 1_000_000
    HOSTILE["NIfTI spacing and affine"] = read + refused
    assert read and refused


OUT_OF_MEANING = [
    ["evaluate", "--n-boot", "0"], ["evaluate", "--n-boot", "-5"], ["evaluate", "--n-boot", "nan"],
    ["evaluate", "--n-boot", "1000000000"], ["evaluate", "--n-boot", "many"],
    ["predict", "x.png", "--batch-size", "0"], ["predict", "x.png", "--batch-size", "5000"],
    ["explain", "x.png", "--alpha", "-0.1"], ["explain", "x.png", "--alpha", "1.5"],
    ["explain", "x.png", "--alpha", "nan"], ["explain", "x.png", "--alpha", "inf"],
    ["audit", "--max-distance", "-1"], ["audit", "--max-distance", "65"],
    ["train", "--seed", "-1"], ["train", "--seed", "4294967296"], ["train", "--dropout", "nan"],
    ["train", "--dropout", "inf"], ["train", "--input-size", "100000"], ["train", "--cv-folds", "1"],
    ["train", "--cv-folds", "21"], ["train", "--cv-fold", "-1"], ["train", "--rotation", "nan"],
    ["train", "--head-lr", "0"], ["train", "--batch-size", "1e3"],
    ["tune", "--study", "s", "--trials", "0"], ["tune", "--study", "s", "--trials", "1", "--timeout", "-1"],
]


def test_option_values_outside_their_meaning_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("COVIDCT_FROZEN_CACHE_GB", "nan")  # a numeric setting of the environment, too
    HOSTILE["option values"] = len(OUT_OF_MEANING) + 1
    for argv in OUT_OF_MEANING:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert one_line(err).startswith("error: ") and "Traceback" not in err, (argv, err)
    from core.base import paths

    with pytest.raises(ValueError, match="COVIDCT_FROZEN_CACHE_GB 'nan'|COVIDCT_FROZEN_CACHE_GB nan must be"):
        paths.frozen_cache_budget(tmp_path)
    assert not (tmp_path / "runs").exists()


def test_the_hostile_corpus_holds_at_least_200_inputs():
    """Runs last (pytest keeps the file's order): the classes above generated this many."""
    if len(HOSTILE) < 6:
        pytest.skip("run with the whole file: the count comes from the tests above")
    print(f"hostile inputs: {sum(HOSTILE.values())} {HOSTILE}")
    assert sum(HOSTILE.values()) >= 200, HOSTILE
