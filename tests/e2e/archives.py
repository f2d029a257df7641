"""Archives built entry by entry, hostile ones included, for the package tests."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from typing import Any

Entry = tuple[str, str, Any]  # (kind, name, data): file, dir, symlink, hardlink, chr, fifo


def make_zip(
    entries: list[Entry], *, modes: dict[str, int] | None = None, method: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for kind, name, data in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            mode = {"file": stat.S_IFREG | 0o644, "dir": stat.S_IFDIR | 0o755,
                    "symlink": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o644,
                    "fifo": stat.S_IFIFO | 0o644}[kind]  # fmt: skip
            mode = (modes or {}).get(name, mode)
            info.external_attr = mode << 16
            info.compress_type = method
            archive.writestr(info, data if isinstance(data, bytes) else str(data or "").encode())
    return buffer.getvalue()


def make_tar(
    entries: list[Entry], *, modes: dict[str, int] | None = None, encoding: str = "utf-8",
    form: int = tarfile.PAX_FORMAT,
) -> bytes:  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", encoding=encoding, format=form) as archive:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = (modes or {}).get(name, 0o755 if kind == "dir" else 0o644)
            payload = b""
            if kind == "file":
                payload = data if isinstance(data, bytes) else str(data).encode()
                info.size = len(payload)
            else:
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
                             "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]  # fmt: skip
                if kind in ("symlink", "hardlink"):
                    info.linkname = data
            archive.addfile(info, io.BytesIO(payload) if kind == "file" else None)
    return buffer.getvalue()


def damaged_lzma_zip(entries: list[Entry]) -> bytes:
    """A zip whose LZMA data is damaged in the middle (its headers intact)."""
    data = bytearray(make_zip(entries, method=zipfile.ZIP_LZMA))
    middle = data.index(b"PK\x01\x02") // 2  # inside the first entry's compressed bytes
    data[middle : middle + 16] = bytes(16)
    return bytes(data)
