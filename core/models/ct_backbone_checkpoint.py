"""Read a PyTorch zip checkpoint into NumPy arrays without PyTorch, and
without running anything the file names.

A `torch.save` file is a zip: `<name>/data.pkl`, a pickle that rebuilds the
tensors, and their raw little-endian storages in `<name>/data/<key>`. A
plain `pickle.load` would call whatever function the pickle names, so a
checkpoint from the internet could run any code. Here the unpickler resolves
only the names a tensor checkpoint needs, to functions of this module that
build NumPy arrays (checking every offset against the storage's size), and
refuses every other name before anything is called.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """The file is not a tensor checkpoint this reader accepts."""


# torch storage type -> how its bytes are stored. bfloat16 is the top half of
# a float32, so it is read as uint16 and widened below.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "BoolStorage": np.dtype("?"),
}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32: the same 16 bits followed by 16 zero bits."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage: np.ndarray, offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, here
    copied into a C-ordered array after checking that it stays inside the storage."""
    if not isinstance(storage, np.ndarray):
        raise CheckpointError("a tensor refers to something that is not a storage")
    size, stride = tuple(size), tuple(stride)
    numbers = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(n, int) and n >= 0 for n in numbers):
        raise CheckpointError(f"a tensor has an invalid shape {size} or stride {stride}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.size:
        raise CheckpointError(f"a tensor of shape {size} reaches past its storage ({storage.size} elements)")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride], writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    """torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError("a parameter wraps something that is not a tensor")
    return data


class _StorageType:
    """Stands for a torch storage class; persistent_load reads its bytes."""

    def __init__(self, name: str):
        self.name = name


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(f"refused: the checkpoint names {module}.{name}, "
                                  "which is not part of a tensor checkpoint") from None

    def persistent_load(self, pid):
        """('storage', storage type, key, device, number of elements) -> a flat array."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise CheckpointError(f"refused: unknown persistent id {pid!r:.80}")
        _, storage_type, key, _, count = pid
        if key not in self.storages:
            dtype = STORAGE_DTYPES[storage_type.name]
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            if len(raw) != count * dtype.itemsize:
                raise CheckpointError(f"storage {key}: {len(raw)} bytes for {count} elements of {dtype}")
            array = np.frombuffer(raw, dtype=dtype)
            self.storages[key] = bfloat16_to_float32(array) if storage_type.name == "BFloat16Storage" else array
        return self.storages[key]


def read_checkpoint(path):
    """What a PyTorch zip checkpoint holds (dicts, lists, numbers, strings), its tensors as NumPy arrays."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint ({error})") from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the zip, found {len(pickles)}")
        prefix = pickles[0].removesuffix("data.pkl").rstrip("/")
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: a big-endian checkpoint")
        try:
            with archive.open(pickles[0]) as file:
                return _TensorUnpickler(file, archive, prefix).load()
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
