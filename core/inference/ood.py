"""Out-of-distribution guard: is an input like the slices the model was trained on?

A classifier answers every input, a holiday photo or a CT crop of the spine
included. Before a prediction is shown, the input must pass:

1. Image checks, set from the COVID-CT images themselves (docs/trust.md gives
   the figures they rest on): grey (at most MAX_COLOUR_SHARE of its pixels
   coloured) and at least MIN_SIDE pixels on its short side.
2. Backbone features: the mean cosine distance from its pooled last-stage
   features (what the head classifies) to its K nearest training slices must
   be at most the PERCENTILE-th percentile of the validation slices' distances
   (held-out patients, so their distances are those of new in-distribution
   slices; training slices' own would be too small).

The reference (training features and the threshold) is built once per run,
when it is deployed (core.inference.deploy), and stored with it: ood.npz and ood.json.
"""
from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format
from sklearn.neighbors import NearestNeighbors

from core.base import files
from core.runs import checks, dataset, schemas
from core.data.images import load_image
from core.runs.schemas import OOD_FEATURES as FEATURES_FILE, OOD_SUMMARY as SUMMARY_FILE

MAX_FEATURES_BYTES = 512 * 2**20  # a float16 row of 2048 features per training slice
K = 5
PERCENTILE = 99.0
MIN_SIDE = 48               # px on the short side
COLOUR_SPREAD = 40          # a pixel whose channels differ by more than this (0..255) is coloured
MAX_COLOUR_SHARE = 0.15     # share of coloured pixels above which an image is a photo, not a CT slice
REFUSAL = "not like the training slices — no prediction"


def image_problems(image: np.ndarray) -> list[str]:
    """Reasons a decoded slice (uint8 H x W x 3) is not a CT slice like COVID-CT's; [] if none."""
    problems = []
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        problems.append(f"too small ({width} × {height} px; the training slices are at least {MIN_SIDE} px)")
    spread = image.max(axis=2).astype(int) - image.min(axis=2)
    coloured = float((spread > COLOUR_SPREAD).mean())
    if coloured > MAX_COLOUR_SHARE:
        problems.append(f"a colour image ({coloured:.0%} of its pixels are coloured; CT slices are grey)")
    return problems


def _normalise(features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


@dataclass
class Guard:
    """The training slices' features and the distance above which an input is refused."""
    reference: np.ndarray  # L2-normalised training features (N, D)
    threshold: float
    k: int = K

    def __post_init__(self):
        self._neighbours = NearestNeighbors(n_neighbors=min(self.k, len(self.reference))).fit(self.reference)

    def distance(self, features) -> np.ndarray:
        """Mean distance to the k nearest training slices (1 - cosine similarity)."""
        euclidean, _ = self._neighbours.kneighbors(_normalise(features))
        return (euclidean ** 2 / 2).mean(axis=1)  # unit vectors: |u - v|^2 = 2 (1 - cos)

    def problems(self, images: list[np.ndarray], features) -> list[list[str]]:
        """Why each slice is refused ([] when it passes), given their backbone
        features (N x D): one neighbour search for the whole batch."""
        distances = self.distance(np.asarray(features)) if len(images) else []
        found = []
        for image, distance in zip(images, distances):
            problems = image_problems(image)
            if distance > self.threshold:
                problems.append(f"its image features are far from every training slice's (distance {distance:.3f}, "
                                f"above the {PERCENTILE:g}th percentile of validation slices', {self.threshold:.3f})")
            found.append(problems)
        return found

    @classmethod
    def from_run(cls, run_dir) -> "Guard | None":
        """The run's stored guard, None when it has none yet (not deployed);
        DamagedRun naming the file when either file fails its schema."""
        summary = checks.read_valid(Path(run_dir) / SUMMARY_FILE)
        path = Path(run_dir) / FEATURES_FILE
        if not summary or not path.exists():
            return None
        try:
            arrays = _read_arrays(files.read_regular(path, MAX_FEATURES_BYTES, run_dir))
        except Exception as error:  # numpy and zipfile raise many kinds on a damaged file
            raise checks.DamagedRun(f"{path}: not a readable feature file ({error})") from None
        problems = schemas.ood_features_problems(arrays)
        if problems:
            raise checks.DamagedRun(f"{Path(run_dir) / problems[0]}")
        return cls(reference=arrays["train"].astype(np.float32), threshold=float(summary["threshold"]),
                   k=int(summary.get("k", K)))


def _read_arrays(content: bytes) -> dict:
    """The arrays of an .npz file, each header's shape checked against the bytes
    its member holds before numpy allocates it; never a pickle."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for member in archive.infolist():
            with archive.open(member) as stream:
                version = npy_format.read_magic(stream)
                header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                shape, _, dtype = header(stream)
            if math.prod(shape) * dtype.itemsize > member.file_size:
                raise ValueError(f"{member.filename} announces {shape} but holds {member.file_size} bytes")
    with np.load(io.BytesIO(content), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def build_reference(predictor, report=lambda line: None) -> dict:
    """Features of the run's training and validation slices through its model,
    the refusal threshold, stored in the run folder. Returns the summary."""
    run_dir = Path(predictor.run_dir)
    features = {}
    for split, image_paths in dataset.run_images(run_dir, ("train", "val")).items():
        report(f"out-of-distribution reference: {len(image_paths)} {split} slices")
        # Through predictor.prepare, as every slice it predicts: the reference sees what the model sees.
        images = [predictor.prepare(load_image(path)) for path in image_paths]
        features[split] = (predictor.features(np.stack(images)) if images
                           else np.zeros((0, predictor.model.get_layer("head_pool").output.shape[-1])))
    # Stored as float16 (half the file); the threshold is measured against what is stored.
    reference = _normalise(features["train"]).astype(np.float16)
    guard = Guard(reference=reference.astype(np.float32), threshold=np.inf)
    val_distances = guard.distance(features["val"])
    threshold = float(np.percentile(val_distances, PERCENTILE)) if len(val_distances) else float("inf")
    summary = {"k": guard.k, "percentile": PERCENTILE, "threshold": threshold,
               "n_train": len(features["train"]), "n_val": len(val_distances),
               "val_distance_median": float(np.median(val_distances)) if len(val_distances) else None,
               "layer": "head_pool (global average of conv5)"}
    files.save_npz(run_dir / FEATURES_FILE, train=reference)
    files.write_json(run_dir / SUMMARY_FILE, summary)
    return summary
