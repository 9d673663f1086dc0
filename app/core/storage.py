"""The artifact store: uploads and artifacts, written atomically and never overwritten.

Keys are relative paths (``models/<id>/model.onnx``). A write goes to a staging file in the store's own
``.staging/`` folder while a running sha256 and byte count are kept, is fsynced, and is renamed into place
only when complete; an aborted write leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.core.errors import Conflict, PayloadTooLarge

CHUNK = 1 << 20


class StagedFile:
    """A file being received: counts and hashes every chunk, refuses to grow past ``limit``."""

    def __init__(self, path: Path, limit: int, exceeded: str | None = None) -> None:
        self.path = path
        self.limit = limit
        self.exceeded = exceeded or f"the upload exceeds the limit of {limit} bytes"
        self.size = 0
        self._hash = hashlib.sha256()
        self._fh: BinaryIO | None = open(path, "xb")  # noqa: SIM115 - closed in finish()/discard()

    def write(self, chunk: bytes) -> None:
        assert self._fh is not None
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLarge(self.exceeded)
        self._hash.update(chunk)
        self._fh.write(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


class Store:
    """What every store shares: a write is staged in ``staging_dir`` (running sha256 and byte count, a size
    limit) until ``commit`` puts it under its key. A directory (:class:`LocalStore`) or S3 (:mod:`app.core.s3`)."""

    staging_dir: Path
    presigned = False  # downloads stream through the API

    def stage(self, limit: int, exceeded: str | None = None) -> StagedFile:
        return StagedFile(self.staging_dir / uuid.uuid4().hex, limit, exceeded)

    def commit(self, staged: StagedFile, key: str) -> None:
        raise NotImplementedError

    def put_file(self, source: Path, key: str) -> tuple[int, str]:
        """Copy a local file into the store; returns (size, sha256)."""
        staged = self.stage(limit=1 << 62)
        try:
            with open(source, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    staged.write(chunk)
            self.commit(staged, key)
        except BaseException:
            staged.discard()
            raise
        return staged.size, staged.sha256

    def staged(self) -> Iterator[tuple[Path, float]]:
        """Staging files with their modification times (for the consistency check)."""
        for entry in self.staging_dir.iterdir():
            yield entry, entry.stat().st_mtime


class LocalStore(Store):
    """Artifact store on a local (or network-mounted) directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root / ".staging"
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or key.startswith(".staging"):
            raise ValueError(f"invalid storage key {key!r}")
        return path

    def commit(self, staged: StagedFile, key: str) -> None:
        """Move a finished staging file to ``key``; an existing key is never overwritten."""
        staged.finish()
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(staged.path, target)  # fails if the key exists: immutability without a race
        except FileExistsError as exc:
            raise Conflict(f"storage key {key} already exists") from exc
        finally:
            staged.path.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def copy(self, source_key: str, key: str) -> None:
        """Make ``key`` hold the same bytes as ``source_key``: a hard link, since stored files never change."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.path(source_key), target)
        except FileExistsError as exc:
            raise Conflict(f"storage key {key} already exists") from exc
        _fsync_dir(target.parent)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def size_or_none(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Yield bytes ``start..end`` inclusive."""
        with open(self.path(key), "rb") as fh:
            fh.seek(start)
            remaining = end - start + 1
            while remaining > 0 and (chunk := fh.read(min(CHUNK, remaining))):
                remaining -= len(chunk)
                yield chunk

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def entries(self, top: str) -> Iterator[tuple[str, float]]:
        """Every ``top/<id>`` prefix in the store with its modification time (for the consistency check)."""
        folder = self.root / top
        if folder.is_dir():
            for entry in folder.iterdir():
                yield f"{top}/{entry.name}", entry.stat().st_mtime

    def check(self) -> None:
        probe = self.staging_dir / f"probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_stores: dict[str, Store] = {}


def get_store() -> Store:
    """The configured store: a directory, or S3-compatible storage (:mod:`app.core.s3`, same methods)."""
    from app.core.settings import get_settings

    settings = get_settings()
    url = settings.storage_url or ""
    if url not in _stores:
        if url.startswith("s3://"):
            from app.core.s3 import make_s3_store

            _stores[url] = make_s3_store(url, settings)
        else:
            _stores[url] = LocalStore(settings.artifact_root)
    return _stores[url]
