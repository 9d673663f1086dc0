"""Zip archives from users, checked before anything is extracted or handed to a library.

Checked: entry count, total expanded size, compression ratio (zip bombs), names (no absolute paths, no
``..``, no backslashes or drive letters, none twice), entry types (no symbolic links or other special files),
and that every local header agrees with the central directory.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


class ArchiveRefused(Exception):
    pass


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 10_000
    max_expanded_bytes: int = 32 << 30
    max_ratio: float = 200.0


def safe_members(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[zipfile.ZipInfo]:
    """The archive's entries, after every check; raises :class:`ArchiveRefused` naming the problem."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveRefused(f"not a readable zip archive: {exc}") from exc
    with archive:
        members = archive.infolist()
    if len(members) > limits.max_entries:
        raise ArchiveRefused(f"the archive has {len(members)} entries; the limit is {limits.max_entries}")
    seen: set[str] = set()
    for info in members:
        if info.filename in seen:  # which copy a library reads is up to the library: refuse the ambiguity
            raise ArchiveRefused(f"the archive holds the entry {info.filename!r} more than once")
        seen.add(info.filename)
    _check_local_headers(path, members)
    total = 0
    for info in members:
        name = info.filename
        parts = PurePosixPath(name).parts
        if (name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0])
                or "\x00" in name):
            raise ArchiveRefused(f"unsafe entry name in the archive: {name!r}")
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded permissions only
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRefused(f"the archive entry {name!r} is a link or special file")
        total += info.file_size
        if total > limits.max_expanded_bytes:
            raise ArchiveRefused(f"the archive expands past {limits.max_expanded_bytes} bytes")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > (1 << 20) and ratio > limits.max_ratio:
            raise ArchiveRefused(f"the archive entry {name!r} is compressed {ratio:.0f}:1; more than "
                                 f"{limits.max_ratio:.0f}:1 is refused")
    return members


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip's local file header (APPNOTE 4.3.7)


def _check_local_headers(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Each entry's local header names the same file, method, checksum and sizes as the central directory:
    readers that trust one or the other must see the same archive."""
    with open(path, "rb") as f:
        for info in members:
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise ArchiveRefused(f"the archive entry {info.filename!r} has no local header where the central "
                                     "directory says")
            _, _, _, flags, method, _, _, crc, packed, size, name_length, _ = _LOCAL_HEADER.unpack(header)
            name = f.read(name_length).decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            sizes_here = not flags & 0x08 and 0xFFFFFFFF not in (packed, size)  # else in a descriptor or zip64
            if name != info.orig_filename or method != info.compress_type or (
                    sizes_here and (crc, packed, size) != (info.CRC, info.compress_size, info.file_size)):
                raise ArchiveRefused(f"the archive's local and central headers disagree about {info.filename!r}")


def extract(path: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract a checked archive into ``dest`` (which must be empty or new); returns the files written."""
    members = safe_members(path, limits)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = []
    with zipfile.ZipFile(path) as archive:
        for info in members:
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise ArchiveRefused(f"unsafe entry name in the archive: {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "xb") as out:
                remaining = info.file_size
                while chunk := src.read(1 << 20):
                    remaining -= len(chunk)
                    if remaining < 0:  # the header lied about the size
                        raise ArchiveRefused(f"the archive entry {info.filename!r} is larger than it declares")
                    out.write(chunk)
            written.append(target)
    return written
