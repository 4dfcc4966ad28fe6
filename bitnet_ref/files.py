"""Writing files so that a crash never leaves a torn one: the one atomic-write helper every writer uses.

A file is written to a temp file in its own directory, flushed, fsynced, renamed over the target with
``os.replace`` and the directory fsynced; a directory (a Hugging Face export) is written the same way as a whole.
What this is not: a lock. Two processes writing one path at once each leave a complete file, the later one wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so a rename inside it survives a power cut; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write: Callable,
    *,
    binary: bool = True,
    to_path: bool = False,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write a file so that ``path`` holds either its old content or the complete new one, never a torn file.

    ``write(f)`` fills an open temp file in the same directory (``write(tmp_path)`` with ``to_path=True``, for
    writers that open the file themselves). It is flushed, fsynced, given the permissions ``open()`` would give,
    ``before_replace()`` is called (a last check of the target), and it is renamed over ``path``; then the
    directory is fsynced. The directory is created if missing. Temp files left by a process killed mid-write are
    removed by the next write.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; give the file the permissions open() would
        if to_path:
            os.close(fd)
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask())  # the writer may have replaced the file
            _fsync_file(tmp)
        else:
            with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    for stale in directory.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        try:
            stale.unlink()
        except OSError:
            pass


def atomic_dir(
    out: str | os.PathLike,
    files: dict[str, Callable[[Path], None]],
    *,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write ``files`` (name -> writer(path)) into a new directory beside ``out``, fsync them, then rename it into
    place: an old ``out`` is moved aside first and removed after, and put back if the rename fails."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    old = None
    try:
        for name, write in files.items():
            write(tmp / name)
            os.chmod(tmp / name, 0o666 & ~umask())  # e.g. safetensors writes 0600; give what open() would
            _fsync_file(tmp / name)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; give the directory mkdir's permissions
        fsync_dir(tmp)
        if out.exists() or out.is_symlink():
            if before_replace is not None:
                before_replace()
            old = tmp.with_suffix(".old")
            os.rename(out, old)
        os.rename(tmp, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
