"""The failures an adversarial probe found (issue 29), each reproduced: sizes
checked before the data is transformed, run files believed as written, what
a folder contains taken for what it is, and where the tool reads. Each
input ends in one line naming the file and field, a non-zero exit where a
command refuses, and the other runs still listed and answering. tests/test_fuzz.py
generates the classes these cases belong to."""
import gzip
import io
import json
import os
import shutil
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from test_run_check import completed_run, edit_json

from core.base import files
from core.cli.main import main
from core.data import scans
from core.data.limits import ImageReadError
from core.inference import calibration, ood
from core.runs import catalogue, checks, storage
from core.runs.train_config import TrainConfig

PEAK_BYTES = 64 * 2**20  # what reading one hostile input may allocate


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    runs_root = tmp_path / "runs"
    return completed_run(runs_root, "a-intact", tmp_path), completed_run(runs_root, "b-hostile", tmp_path)


def one_line_error(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in line
    return line


def bounded(read, *args):
    """read(*args) with its peak of traced memory and its CPU time."""
    tracemalloc.start()
    started = time.process_time()
    try:
        return read(*args)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < PEAK_BYTES and time.process_time() - started < 3, (peak, time.process_time() - started)


# Sizes checked before the data is transformed

@pytest.mark.parametrize("shape, zooms, limit", [
    ((512, 512, 25), (1, 125, 1), "262 M a scan"),  # a few kB of gzip: 819 M pixels once square
    ((64, 64, 1), (1, 1e6, 1), "50 M a slice"),     # one slice 64 000 000 px tall
])
def test_nifti_spacing_is_limited_on_the_square_pixels_it_makes(shape, zooms, limit):
    volume = nib.Nifti1Image(np.full(shape, -1000, np.int16), np.diag([*zooms, 1.0]))
    content = gzip.compress(volume.to_bytes())
    assert len(content) < 200_000
    with pytest.raises(ImageReadError, match=rf"ct\.nii\.gz: NIfTI voxels of .* once square .*{limit}") as error:
        bounded(scans.read_nifti, content, "ct.nii.gz")
    assert "\n" not in str(error.value)


# (nibabel itself reads a voxel size of 0 as 1 and a negative one as its absolute value)
@pytest.mark.parametrize("zooms", [(np.nan, 1, 1), (np.inf, 1, 1), (1, np.nan, 1), (1, 1, -np.inf)])
def test_nifti_voxel_sizes_must_be_positive_and_finite(zooms):
    content = nib.Nifti1Image(np.full((32, 32, 2), -1000, np.int16), np.eye(4)).to_bytes()
    with pytest.raises(ImageReadError, match=r"v\.nii: NIfTI voxel size .* must be a positive finite number"):
        bounded(scans.read_nifti, with_pixdim(content, zooms), "v.nii")


def with_pixdim(content: bytes, zooms) -> bytes:
    """A NIfTI-1 file with its header's voxel sizes replaced (nibabel writes them from the affine)."""
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(content[:348]))
    header["pixdim"][1:4] = zooms
    return header.binaryblock + content[348:]


# Run files believed as written

@pytest.mark.parametrize("a, reason", [(-1, "a -1 must be in (0, inf)"), ("x", "a 'x' is not a number"),
                                       (float("nan"), "a nan must be")])
def test_a_calibration_that_falls_or_is_no_number_isolates_its_run(two_runs, capsys, a, reason):
    intact, hostile = two_runs
    fitted = calibration.for_run(hostile).to_dict()
    files.write_json(hostile / "calibration.json", {**fitted, "a": a})
    with pytest.raises(checks.DamagedRun) as error:
        calibration.for_run(hostile)
    assert str(error.value).startswith(f"{hostile / 'calibration.json'}: {reason}")
    listed = {run["id"]: run for run in catalogue.list_runs()}
    assert listed[hostile.name]["problems"][0].startswith(f"calibration.json: {reason}")
    assert main(["predict", "--run", hostile.name, "x.png"]) == 2
    assert f"{hostile / 'calibration.json'}: " in one_line_error(capsys)
    assert main(["evaluate", "--n-boot", "20"]) == 0 and f"run {intact.name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["config.json", "status.json", "metrics.json", "scan.json"])
def test_deeply_nested_json_isolates_its_run(two_runs, capsys, name):
    intact, hostile = two_runs
    (hostile / name).write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    listed = {run["id"]: run for run in catalogue.list_runs()}
    assert listed[hostile.name]["problems"][0] == f"{name}: not JSON this tool reads (nested deeper than 32 levels)"
    assert main(["runs"]) == 0 and f"{hostile.name}: {name}: not JSON" in capsys.readouterr().out
    assert main(["evaluate", "--n-boot", "20"]) == 0 and f"run {intact.name}" in capsys.readouterr().out
    assert main(["evaluate", "--run", hostile.name]) == 2 and name in one_line_error(capsys)


def test_a_list_where_a_number_belongs_is_named_and_left_out_of_the_listing(two_runs, capsys):
    intact, hostile = two_runs
    edit_json("config.json", lambda c: {**c, "dropout": [0.3]})(hostile)
    assert main(["runs"]) == 0
    assert f"{hostile.name}: config.json: dropout [0.3] is not a number" in capsys.readouterr().out
    assert "dropout" not in catalogue.load_run(hostile)["config"]


def test_a_corrupt_ood_reference_is_refused_naming_its_file(two_runs):
    _, hostile = two_runs
    files.write_json(hostile / "ood.json", {"k": 5, "threshold": 0.2})
    for content in (b"PK\x03\x04 not a zip", b""):
        (hostile / "ood.npz").write_bytes(content)
        with pytest.raises(checks.DamagedRun, match=rf"{hostile / 'ood.npz'}: not a readable feature file"):
            ood.Guard.from_run(hostile)
    files.save_npz(hostile / "ood.npz", train=np.full((3, 4), np.nan, np.float16))
    with pytest.raises(checks.DamagedRun, match=r"ood\.npz: train holds non-finite values"):
        ood.Guard.from_run(hostile)
    files.write_json(hostile / "ood.json", {"k": 0, "threshold": "far"})
    assert catalogue.load_run(hostile)["problems"][0] == "ood.json: k 0 must be between 1 and 1000"


def test_a_negative_seed_is_refused_naming_the_setting(two_runs, capsys):
    _, hostile = two_runs
    assert "seed -1 must be between 0 and 4294967295" in TrainConfig(seed=-1).problems(here=False)
    assert main(["train", "--seed", "-1"]) == 2 and "seed -1 must be between 0" in one_line_error(capsys)
    edit_json("config.json", lambda c: {**c, "seed": -1})(hostile)
    assert catalogue.load_run(hostile)["problems"] == ["config.json: seed -1 must be between 0 and 4294967295"]


def test_a_pid_reused_by_another_process_reads_interrupted(tmp_path):
    run_dir = storage.new_run({"seed": 0}, name="x", runs_root=tmp_path)
    assert storage.read_status(run_dir)["state"] == "running"  # this process, started when the status says
    # The pid now names another process: this one, started at another time than the status's.
    storage.set_status(run_dir, "running", pid=os.getpid(), pid_start=storage.process_start(os.getpid()) + 1)
    assert storage.read_status(run_dir)["state"] == "interrupted"  # so `resume` takes it
    assert catalogue.list_runs(tmp_path)[0]["status"]["state"] == "interrupted"


def test_deploying_a_damaged_run_writes_nothing_into_it(two_runs):
    from core.inference import deploy

    _, hostile = two_runs
    edit_json("metrics.json", lambda m: {**m, "threshold": {"value": 7}})(hostile)
    before = sorted(p.name for p in hostile.iterdir())
    with pytest.raises(checks.DamagedRun, match=r"metrics\.json: threshold\.value 7 must be between 0 and 1"):
        deploy.deploy(hostile.name, force=True)
    assert sorted(p.name for p in hostile.iterdir()) == before and not deploy.deployed_file().exists()


def test_a_damaged_deployed_record_is_named(two_runs, capsys):
    from core.inference import deploy

    deploy.deployed_file().write_text(json.dumps({"run": "../../etc"}))
    assert main(["predict", "x.png"]) == 2
    assert "deployed.json: run: invalid run id '../../etc'" in one_line_error(capsys)


# What a folder contains, not what it is

def slice_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (64, 64), np.uint8)).save(path)


def test_a_class_folder_linked_to_its_parent_is_refused_before_anything_is_stored(two_runs, tmp_path, capsys):
    _, run = two_runs
    data = tmp_path / "hospital"
    for i in range(3):
        slice_png(data / "COVID" / f"{i}.png")
    (data / "NonCOVID").symlink_to(data)
    assert main(["evaluate", "--run", run.name, "--data", str(data)]) == 2
    assert f"{data / 'NonCOVID'}: a link to {data}" in one_line_error(capsys)
    assert not (run / "external").exists()


def test_a_class_without_images_is_refused_naming_its_folder(two_runs, tmp_path, capsys):
    _, run = two_runs
    data = tmp_path / "hospital"
    for i in range(3):
        slice_png(data / "COVID" / f"{i}.png")
    (data / "NonCOVID").mkdir()
    (data / "NonCOVID" / "notes.png").write_text("not an image")
    assert main(["evaluate", "--run", run.name, "--data", str(data)]) == 2
    line = one_line_error(capsys)
    assert f"{data / 'NonCOVID'}: no readable image of the run's class 'NonCOVID'" in line
    assert "specificity" in line and not (run / "external").exists()


def test_a_link_out_of_a_scan_folder_is_refused_and_its_target_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    scan = tmp_path / "scan"
    slice_png(scan / "1.png")
    (scan / "2.png").symlink_to(secret)
    with pytest.raises(ImageReadError, match=r"^scan/2\.png: a link to outside scan$") as error:
        scans.read_path(scan)
    assert "hunter2" not in str(error.value)


# Where the tool reads and writes

def test_an_unreadable_runs_folder_is_an_error_and_a_missing_one_names_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "nowhere"))  # named on purpose, and missing
    assert main(["runs"]) == 2 and "COVIDCT_ARTIFACTS=" in one_line_error(capsys)
    (tmp_path / "nowhere").mkdir()  # there, with no run made yet: no runs, and where it looked
    assert main(["runs"]) == 0 and f"no runs yet in {tmp_path / 'nowhere' / 'runs'}" in capsys.readouterr().out
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    (tmp_path / "runs").write_text("a file where the runs folder belongs")
    assert main(["runs"]) == 2 and "cannot read the runs folder" in one_line_error(capsys)
    assert main(["evaluate"]) == 2 and "cannot read the runs folder" in one_line_error(capsys)


# The CLI's line output, with a real model

def test_one_input_is_one_line_whatever_its_name(trained_artifacts, data_dir, tmp_path, capsys):
    import csv as csv_module

    source = next((data_dir / "COVID").glob("*.png"))
    names = ["two\nlines.png", "tab\there.png", "esc\x1b[31m.png", "rtl\u202egnp.png", os.fsdecode(b"bytes\xff.png")]
    folder = tmp_path / "slices"
    folder.mkdir()
    for name in names:
        shutil.copy(source, os.path.join(folder, name))
    os.mkfifo(folder / "fifo.png")
    (folder / "outside.png").symlink_to(source)
    csv = tmp_path / "out.csv"
    assert main(["predict", str(folder), "--run", "latest", "--csv", str(csv)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().split("\n")
    assert len(lines) == len(names) and all(len(line.split("\t")) == 3 for line in lines)
    assert ["fifo.png: a FIFO" in captured.err, "outside.png: a link to outside slices" in captured.err] == [True] * 2
    assert len(captured.err.strip().split("\n")) == 2
    # The CSV keeps each name as it is, its bytes that are not UTF-8 too (read with the csv module: pandas'
    # string columns cannot hold them).
    rows = list(csv_module.reader(io.StringIO(csv.read_bytes().decode("utf-8", "surrogateescape"), newline="")))
    assert rows[0][0] == "path" and sorted(row[0] for row in rows[1:]) == sorted(str(folder / n) for n in names)


def test_a_corrupt_ood_reference_stops_predict_naming_its_file(trained_artifacts, data_dir, capsys):
    run_dir = next((trained_artifacts / "runs").iterdir())
    files.write_json(run_dir / "ood.json", {"k": 5, "threshold": 0.2})
    (run_dir / "ood.npz").write_bytes(b"garbage")
    try:
        assert main(["predict", str(next((data_dir / "COVID").glob("*.png"))), "--run", run_dir.name]) == 2
        assert f"{run_dir / 'ood.npz'}: not a readable feature file" in one_line_error(capsys)
    finally:
        for name in ("ood.json", "ood.npz"):
            (run_dir / name).unlink()
