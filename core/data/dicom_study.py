"""A whole DICOM study: its series listed from their headers, the one best
suited to the lungs preselected by one rule, another chosen by number or UID.

A PACS export of a chest CT holds several series: a localizer (scout), the
axial series in a lung (sharp) and a soft-tissue kernel, thin and thick
reconstructions, coronal and sagittal reformats, maybe a DICOMDIR index. To
list them only headers are read (each file's first bytes, up to its pixel
data; nothing decoded, no zip member inflated past its header), within the
bounds of core.data.limits. The chosen series is then read as one scan by
core.data.scans, within its limits. What holds no DICOM image (slice images,
NIfTI) is read by core.data.scans as before. A DICOMDIR is not needed: every
file's header says its series; one found is compared with the files.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from core.base.files import files_under, read_regular
from core.data import dicom, dicom_frames, dicom_header, limits, scans
from core.data.limits import ImageReadError

MIN_SERIES_IMAGES = 10  # fewer is a localizer, a key-image or dose-report series, not a scan of the lungs
LOCALIZER_WORDS = re.compile(r"topogram|scout|locali[sz]er|surview|scanogram|pilot", re.IGNORECASE)
DICOMDIR = re.compile(r"(^|/)DICOMDIR$", re.IGNORECASE)


@dataclass
class StudyFile:
    name: str                  # for messages: the path inside the folder or zip
    source: object             # a Path, the bytes uploaded, or a zipfile.ZipInfo of the study's archive
    size: int                  # bytes (uncompressed, for a zip member)
    rows: int
    columns: int
    frames: int


@dataclass
class Series:
    index: int                 # 1-based, in listing order (series number, then description)
    uid: str
    number: int | None
    description: str
    kernel: str                # ConvolutionKernel, several values joined by "/"
    thickness: float | None    # SliceThickness, mm
    image_type: str            # ImageType joined by "/", e.g. ORIGINAL/PRIMARY/AXIAL
    orientation: str           # axial, coronal, sagittal, oblique or unknown (ImageOrientationPatient)
    modality: str
    files: list[StudyFile]
    header: pydicom.Dataset    # the first file's header: the summary's source
    positions: list[float] = field(default_factory=list)  # mm along the slice normal, slices that give one

    @property
    def images(self) -> int:
        """Slices: one per file, or the frames of a multi-frame file."""
        return sum(f.frames for f in self.files)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper().split("/") or bool(LOCALIZER_WORDS.search(self.description))


@dataclass
class Study:
    name: str
    series: list[Series]
    preselected: Series | None
    notes: list[str] = field(default_factory=list)  # files left out of the listing, and why
    archive: zipfile.ZipFile | None = None


def lung_suitability(series: Series) -> tuple | None:
    """How well `series` suits the lung model, as a sort key (higher is
    better); None when it is no candidate.

    Candidates are CT (or of no stated modality), not a localizer (a
    projection, not a slice), and axial: the model learned from axial slices,
    and a coronal or sagittal reformat shows the lungs as it never saw them.
    Among candidates, in order:
    1. at least MIN_SERIES_IMAGES slices: a key-image series is not the scan;
    2. a lung or sharp kernel (is_lung_kernel): the training slices are
       lung-window images, mostly from sharp reconstructions, and a soft
       kernel smooths the ground-glass texture the model looks for;
    3. thinner slices: less partial-volume blur of small opacities;
    4. more slices (the complete reconstruction), then the listing order.
    """
    if series.modality not in ("CT", "") or series.is_localizer or series.orientation != "axial":
        return None
    thickness = series.thickness if series.thickness is not None else float("inf")
    return (series.images >= MIN_SERIES_IMAGES, is_lung_kernel(series.kernel, series.description),
            -thickness, series.images, -series.index)


def is_lung_kernel(kernel: str, description: str = "") -> bool:
    """A lung or sharp reconstruction kernel, by the vendors' names: GE LUNG,
    BONE, EDGE, DETAIL; Siemens kernels numbered 50 and up (B70f, Br64d,
    I70f); Canon FC30 and up (FC51, FC52); Philips L, D, E, YA to YD; or
    "lung" in the series description."""
    for value in (part.strip().upper() for part in kernel.split("/")):
        if any(word in value for word in ("LUNG", "BONE", "EDGE", "DETAIL", "SHARP")):
            return True
        numbered = re.match(r"([A-Z]{1,2})(\d{2})", value)  # Siemens B70f, Br64d; Canon FC52
        if numbered and int(numbered.group(2)) >= (30 if numbered.group(1) == "FC" else 50):
            return True
        if re.fullmatch(r"L|D|E|Y[A-D]", value):
            return True
    return bool(re.search(r"lung|pulmo", description, re.IGNORECASE))


def preselect(series: list[Series]) -> Series | None:
    """The series lung_suitability ranks first; a study of one series is read whatever it is."""
    if len(series) == 1:
        return series[0]
    ranked = [(lung_suitability(s), s) for s in series]
    ranked = [(key, s) for key, s in ranked if key is not None]
    return max(ranked, key=lambda pair: pair[0])[1] if ranked else None


def open_study(path, name: str | None = None) -> Study:
    """The DICOM series in a folder, a .zip or one file, from headers alone.
    A folder's files must be regular, its links staying inside it (core.base.files.files_under)."""
    path = Path(path)
    name = name or path.name
    if path.is_dir():
        listed = sorted(files_under(path), key=lambda item: scans.natural_key(str(item[0])))
        for file, problem in listed:
            if problem:
                raise ImageReadError(f"{name}/{file.relative_to(path).as_posix()}: {problem}")
        return _listing(name, [(f.relative_to(path).as_posix(), f, f.stat().st_size) for f, _ in listed])
    if not path.exists():
        raise ImageReadError(f"{name}: no such file or folder")
    return open_files([(path.name, path)], name)


def open_files(files: list[tuple[str, object]], name: str) -> Study:
    """The DICOM series in (file name, path or bytes) pairs, as uploaded: one zip, or the files themselves."""
    if len(files) == 1 and scans.is_zip(files[0][1]):
        archive = scans.open_zip(scans.file_content(*files[0]), files[0][0])
        members = sorted((m for m in archive.infolist() if not m.is_dir()),
                         key=lambda m: scans.natural_key(m.filename))
        study = _listing(name, [(f"{files[0][0]}/{m.filename}", m, m.file_size) for m in members], archive)
        study.archive = archive
        return study
    return _listing(name, [(file_name, source, len(source) if isinstance(source, (bytes, bytearray))
                            else Path(source).stat().st_size) for file_name, source in files])


def _head(source, size: int, file_name: str, archive: zipfile.ZipFile | None) -> bytes:
    """The first `size` bytes of a file, an uploaded file or a zip member."""
    if isinstance(source, zipfile.ZipInfo):
        return zip_member(archive, file_name, source, size)
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:size])
    try:
        return read_regular(source, size, head=True)
    except OSError as error:
        raise ImageReadError(f"{file_name}: {error}") from None


def zip_member(archive: zipfile.ZipFile, file_name: str, member: zipfile.ZipInfo, size: int | None = None) -> bytes:
    """A member's bytes (its first `size`), errors naming it as listed: "<zip>/<member>"."""
    return scans.member_bytes(archive, member, file_name.removesuffix("/" + member.filename), size)


def _listing(name: str, entries: list[tuple[str, object, int]], archive: zipfile.ZipFile | None = None) -> Study:
    """Group the DICOM images among `entries` (name, source, size) by series."""
    index_files = [entry for entry in entries if DICOMDIR.search(entry[0])]
    entries = [entry for entry in entries if not scans.IGNORED_MEMBERS.search(entry[0])]
    if len(entries) + len(index_files) > limits.MAX_STUDY_FILES:
        raise ImageReadError(f"{name}: {len(entries) + len(index_files)} files, more than the "
                             f"{limits.MAX_STUDY_FILES} a study may hold; give the series to read (its folder or zip)")
    by_uid: dict[str, list[tuple[StudyFile, pydicom.Dataset]]] = {}
    left_out, budget = [], limits.MAX_STUDY_HEADER_BYTES
    for file_name, source, size in entries:
        header, read = _file_header(file_name, source, size, archive)
        budget -= read
        if budget < 0:
            raise ImageReadError(f"{name}: over {limits.MAX_STUDY_HEADER_BYTES // 2**20} MB of DICOM headers; "
                                 "give the series to read (its folder or zip)")
        try:
            study_file = StudyFile(file_name, source, size, int(header.Rows), int(header.Columns),
                                   dicom_frames.frame_count(header))
        except (AttributeError, TypeError, ValueError):  # no header, or no usable image size: not an image
            left_out.append(file_name)
            continue
        by_uid.setdefault(str(header.get("SeriesInstanceUID", "no series UID")), []).append((study_file, header))
        if len(by_uid) > limits.MAX_SERIES:
            raise ImageReadError(f"{name}: more than {limits.MAX_SERIES} series, more than a study has; "
                                 "give the series to read (its folder or zip)")
    series = sorted((_series(uid, members) for uid, members in by_uid.items()),
                    key=lambda s: (s.number is None, s.number or 0, s.description, s.uid))
    for index, item in enumerate(series, start=1):
        item.index = index
    notes = [f"{len(left_out)} files that are not DICOM images left out ({scans.few(left_out)})"] if left_out else []
    studies = {str(s.header.get("StudyInstanceUID", "")) for s in series}
    if len(studies) > 1:  # said without naming anyone: a folder of several patients' scans is a mistake
        notes.append(f"its series come from {len(studies)} different studies (StudyInstanceUID): "
                     "check that they are one patient's")
    for file_name, source, size in index_files:
        budget -= min(size, limits.MAX_DICOMDIR_BYTES)
        if size > limits.MAX_DICOMDIR_BYTES or budget < 0:
            notes.append(f"{file_name}: not compared, over {limits.MAX_DICOMDIR_BYTES // 2**20} MB of index "
                         "to parse; series listed from the files")
            continue
        content = _head(source, size, file_name, archive)
        notes += dicom_header.dicomdir_notes(file_name, content, {s.uid: s.images for s in series})
    return Study(name, series, preselect(series) if series else None, notes)


def _file_header(file_name: str, source, size: int, archive) -> tuple[pydicom.Dataset | None, int]:
    """(its header or None, DICOM bytes parsed): the first STUDY_HEADER_BYTES,
    more only for a DICOM file whose header is longer (an enhanced CT's
    per-frame groups). Other files (a README, slice images) are not parsed and count nothing."""
    head = _head(source, min(size, limits.STUDY_HEADER_BYTES), file_name, archive)
    if not (head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")):  # as core.data.images tells DICOM
        return None, 0
    header = dicom.dicom_header(head, file_name)
    if header is None and size > limits.STUDY_HEADER_BYTES:
        more = _head(source, min(size, dicom.MAX_DICOM_HEADER_BYTES), file_name, archive)
        return dicom.dicom_header(more, file_name), len(head) + len(more)
    return header, len(head)


def _series(uid: str, members: list[tuple[StudyFile, pydicom.Dataset]]) -> Series:
    header = members[0][1]
    orientation = dicom_frames.functional_value(header, "ImageOrientationPatient")
    text, number = dicom_header.text, dicom_header.number
    return Series(0, uid, number(header.get("SeriesNumber")), text(header.get("SeriesDescription")),
                  text(dicom_frames.functional_value(header, "ConvolutionKernel")),
                  number(dicom_frames.functional_value(header, "SliceThickness"), float),
                  text(header.get("ImageType")), dicom_header.orientation_name(orientation),
                  text(header.get("Modality")), [f for f, _ in members], header,
                  dicom_header.positions_along(orientation, [h for _, h in members]))


def choose(study: Study, series: str | int | None = None) -> Series:
    """The series to read: `series` by its index in the listing (1, 2, ...)
    or its SeriesInstanceUID; by default the preselected one."""
    if not study.series:
        raise ImageReadError(f"{study.name}: no DICOM series to choose from")
    if series is None or str(series).strip() == "":
        if study.preselected is None:
            raise ImageReadError(f"{study.name}: none of its {len(study.series)} series is an axial CT series "
                                 "to preselect (localizers, reformats); choose one by its number or UID")
        return study.preselected
    wanted = str(series).strip()
    for item in study.series:
        if wanted == item.uid or (wanted.isdigit() and int(wanted) == item.index):
            return item
    raise ImageReadError(f"{study.name}: no series {wanted!r}: give a number from 1 to {len(study.series)} "
                         "or one of its series' UIDs")


def read_series(study: Study, chosen: Series) -> scans.Scan:
    """`chosen` read as one scan (core.data.scans: its limits, body-axis order),
    a note saying which series it is; refused when its images differ in size."""
    first = chosen.files[0]
    for item in chosen.files[1:]:
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise ImageReadError(f"{item.name}: {item.columns}x{item.rows} px, where series "
                                 f"{chosen.index} ({first.name}) has {first.columns}x{first.rows}; "
                                 "a series of mixed image sizes is not one scan")
    scans.check_total([f.size for f in chosen.files], study.name)  # before any file is read whole
    files = [(f.name, zip_member(study.archive, f.name, f.source) if isinstance(f.source, zipfile.ZipInfo)
              else f.source) for f in chosen.files]
    read = scans.read_files(files, study.name)
    how = "preselected" if chosen is study.preselected else "chosen"
    label = dicom_header.series_label(chosen)
    read.notes.insert(0, f"series {chosen.index} of {len(study.series)} ({how}): {label}")
    read.notes[1:1] = study.notes
    return read


def read_study(study: Study, series: str | int | None, read_other) -> tuple[scans.Scan, Study | None, Series | None]:
    """(scan, study, chosen series): the study's preselected series or
    `series`; read_other() when it holds no DICOM image (slice images, NIfTI)."""
    try:
        if not study.series:
            if series is not None:
                raise ImageReadError(f"{study.name}: holds no DICOM series to choose {series!r} from")
            return read_other(), None, None
        chosen = choose(study, series)
        return read_series(study, chosen), study, chosen
    finally:
        if study.archive is not None:
            study.archive.close()


def read_scan(path, series: str | int | None = None, name: str | None = None):
    """(scan, study, chosen series) for a folder, zip or file (open_study, read_study)."""
    return read_study(open_study(path, name), series, lambda: scans.read_path(path, name))


def read_upload(files: list[tuple[str, bytes]], name: str, series: str | int | None = None):
    """(scan, study, chosen series) for uploaded files: one zip, or files of one study."""
    return read_study(open_files(files, name), series, lambda: scans.read_files(files, name))
