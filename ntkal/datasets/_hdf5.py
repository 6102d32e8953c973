"""Opening HDF5 files with errors that name the file."""

from __future__ import annotations

import os

import h5py

from ntkal.datasets._errors import DatasetFormatError

__all__ = ["open_hdf5"]


def open_hdf5(path: str) -> h5py.File:
    """Open ``path`` read-only; a missing or unreadable file raises :class:`DatasetFormatError`."""
    if not os.path.exists(path):
        raise DatasetFormatError(path, None, "file does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DatasetFormatError(path, None, f"not a readable HDF5 file ({err})") from err
