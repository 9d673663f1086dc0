"""Read what an ``.npz`` holds from its ``.npy`` headers: names, dtypes, shapes; the values of floating arrays
are scanned once, a chunk at a time, for NaN and infinity (a metric over them would be meaningless). Never
unpickles: object arrays (the only kind that needs pickle) are refused, as ``np.load(allow_pickle=False)``
would."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from app.core.archives import ArchiveLimits, ArchiveRefused, safe_members
from app.core.errors import BadRequest, UnprocessableUpload, UnsupportedMediaType

CHUNK = 1 << 20


def read_arrays(path: Path, limits: ArchiveLimits) -> tuple[list[dict[str, Any]], int]:
    """``([{"name", "dtype", "shape"}], samples)``; every array must have the same first dimension."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise BadRequest("the upload is empty")
    if head != b"PK\x03\x04":
        raise UnsupportedMediaType("a dataset must be an .npz file (numpy.savez or savez_compressed)")
    try:
        members = safe_members(path, limits)
    except ArchiveRefused as exc:
        raise UnprocessableUpload(str(exc)) from exc
    arrays = []
    with zipfile.ZipFile(path) as archive:
        for info in members:
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise UnprocessableUpload(f"{info.filename!r} is not a .npy entry; upload an .npz from numpy.savez")
            name = info.filename[: -len(".npy")]
            with archive.open(info) as fh:
                try:
                    version = npy.read_magic(fh)
                    shape, _, dtype = (npy.read_array_header_1_0(fh) if version == (1, 0)
                                       else npy.read_array_header_2_0(fh))
                except (ValueError, zipfile.BadZipFile) as exc:
                    raise UnprocessableUpload(f"array {name!r} has an invalid .npy header: {exc}") from exc
                _check_array(name, shape, dtype, info.file_size - fh.tell())
                try:
                    if dtype.kind in "fc":
                        _check_finite(name, fh, dtype)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise UnprocessableUpload(f"array {name!r} is corrupt: {exc}") from exc
            arrays.append({"name": name, "dtype": np.dtype(dtype).name, "shape": list(shape)})
    if not arrays:
        raise UnprocessableUpload("the .npz holds no arrays")
    counts = {a["shape"][0] for a in arrays}
    if len(counts) != 1:
        raise UnprocessableUpload("arrays disagree on the number of samples (first dimension): "
                                  + ", ".join(f"{a['name']}={a['shape'][0]}" for a in arrays))
    return arrays, counts.pop()


def _check_array(name: str, shape: tuple[int, ...], dtype: np.dtype, data_bytes: int) -> None:
    if dtype.hasobject:
        raise UnprocessableUpload(f"array {name!r} holds Python objects, which would need unpickling; "
                                  "use numeric arrays")
    if not shape:
        raise UnprocessableUpload(f"array {name!r} is a scalar; every array needs a sample axis first")
    if 0 in shape:
        raise UnprocessableUpload(f"array {name!r} has shape {list(shape)}: an empty axis holds no samples")
    needed = math.prod(shape) * dtype.itemsize  # Python integers: a claimed shape cannot overflow
    if needed > data_bytes:
        raise UnprocessableUpload(f"array {name!r} is truncated: shape {list(shape)} needs {needed} bytes, "
                                  f"it holds {data_bytes}")


def _check_finite(name: str, fh, dtype: np.dtype) -> None:
    step = CHUNK - CHUNK % dtype.itemsize
    index = 0
    while chunk := fh.read(step):
        values = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype=dtype)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise UnprocessableUpload(f"array {name!r} holds NaN or infinity (element {index + int(bad[0])} "
                                      "in storage order); clean the data before uploading")
        index += values.size
