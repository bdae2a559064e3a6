"""Explicit, atomic PEM persistence: the only file I/O in the certs package."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from certs.errors import CertError

# PEM files here hold a key or a short chain; anything bigger is a wrong path.
MAX_PEM_BYTES = 1024 * 1024


def save_pem(path: Path, data: bytes, *, private: bool) -> None:
    """Atomically write `data` to `path` (mode 0600 if private, else 0644).

    A crash leaves either the old file or the new one, never a torn file:
    write a temp file in the same directory, fsync it, rename over the target,
    then fsync the directory so the rename itself is durable.
    """
    path = Path(path)
    mode = 0o600 if private else 0o644
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        # Created with the final mode from the start so a private key is never
        # briefly readable by others; O_EXCL refuses to follow a planted file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        try:
            # umask may have narrowed the mode; make it exactly what we promise.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        # Any failure (including Ctrl-C / cancellation) must not leave temp files.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CertError(f"cannot write {path}: {exc.strerror}") from exc
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        # Some filesystems/platforms cannot open directories; the data is
        # already renamed into place, only durability across power loss suffers.
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)


def load_pem(path: Path) -> bytes:
    """Read a PEM file; CertError naming the path if missing, unreadable or not PEM."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise CertError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_PEM_BYTES:
        raise CertError(f"{path} is too large to be a PEM file")
    if b"-----BEGIN " not in data or b"-----END " not in data:
        raise CertError(f"{path} is not a PEM file")
    return data
