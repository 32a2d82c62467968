"""Whole-or-nothing file writes: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files get the usual 0o666 & ~umask, not mkstemp's 0o600


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success rename it over `path`.

    On any exception the temporary file is removed and `path` is untouched, so a
    reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


NAME_MAX = 255  # bytes per file name on every file system this runs on


def overlong_name(path: str | os.PathLike) -> str | None:
    """The first name in `path` longer than a file system allows, or None."""
    return next((p for p in Path(path).parts if len(os.fsencode(p)) > NAME_MAX), None)


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """`path` itself or the nearest folder above it that exists as a file (so `path`
    cannot be made a folder), or None."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail now, before any computation, when `path` could not become a folder: a file is
    there or above it, or a name is longer than the file system allows."""
    from ..errors import InstaSceneError

    path = Path(path)
    long = overlong_name(path)
    if long:
        raise InstaSceneError(f"{what}: the name {long[:40]!r}… is longer than {NAME_MAX} bytes")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise InstaSceneError(f"{what} cannot be made: {blocking} is a file, not a folder", path)
    return path


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder beside `path` (the yielded temporary one), then swap it in whole:
    a reader, or a crash, sees the old folder or the new one, never a mix (a re-run that
    finds fewer instances leaves none of the old ones behind)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
