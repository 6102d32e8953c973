"""Read a PyTorch checkpoint (``torch.save`` zip format) into NumPy without PyTorch.

A ``.pth`` file is a zip archive: ``<root>/data.pkl`` pickles the object (tensors become
references to storages), ``<root>/data/<key>`` hold each storage's raw little-endian bytes.
:func:`load_torch_zip` unpickles it with an allow-list of globals (the tensor and storage
rebuilders, ``OrderedDict``, NumPy arrays and dtypes, ``torch.device``); anything else is refused
(``pickle.UnpicklingError`` naming it), so loading runs no code from the file. Tensors come back as
read-only NumPy arrays with their shape, strides and dtype.

Used to convert foundation-model checkpoints (:mod:`ntkal.models.sevennet_convert`) without
making PyTorch a dependency of ntkal.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

__all__ = ["load_torch_zip"]

#: torch storage class name → NumPy dtype
_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_):
    """``torch._utils._rebuild_tensor_v2`` as NumPy (strides in elements)."""
    itemsize = storage.dtype.itemsize
    if not size:
        return np.array(storage[offset])
    out = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                          strides=tuple(s * itemsize for s in stride))
    return np.array(out)  # a compact copy


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._root = archive, root
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        if module == "torch" and name == "device":
            return str
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            import codecs
            return codecs.encode
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
                "ndarray", "dtype", "_reconstruct", "scalar"):
            if name in ("ndarray", "dtype"):
                return getattr(np, name)
            from numpy._core import multiarray
            return getattr(multiarray, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        kind, storage, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"unknown persistent id {pid[:2]!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"),
                                                count=int(numel))
        return self._storages[key]


def load_torch_zip(path: str | os.PathLike) -> Any:
    """The object ``torch.save`` wrote to ``path`` (zip format), tensors as NumPy arrays.

    Raises:
      ValueError: not a zip-format torch checkpoint, or big-endian.
      pickle.UnpicklingError: the pickle names a global outside the allow-list.
    """
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not a zip-format PyTorch checkpoint ({err})") from err
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one */data.pkl in the archive, found {len(pickles)}")
        root = pickles[0][: -len("/data.pkl")]
        names = set(archive.namelist())
        if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        return _Unpickler(archive.read(pickles[0]), archive, root).load()
