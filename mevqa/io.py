"""Files written so that a crash, a kill or a full disk never leaves half of one behind."""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mevqa.errors import InputError

# a full disk, a quota, a read-only or forbidden folder, a file where a folder should be (or the reverse)
USER_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EFBIG,  # a file-size limit (ulimit -f): as final as a full disk
    errno.EPERM,  # a place no one may write (/sys), whoever you are
)
# how Rust libraries (safetensors, tokenizers) report the OSError under their own exception type
OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """A full disk or a read-only folder is the user's to fix: one clear line, not a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno in USER_ERRNOS:
            raise InputError(f"{path} — cannot write: {os.strerror(e.errno)}") from None
        raise


def write_failure(path: str | Path, e: BaseException) -> InputError | None:
    """The user's-to-fix write failure behind `e`, if it is one: an OSError, a library's wrapped one
    (safetensors: `... (os error 28)`), or torch.save's `file write failed` (which keeps no errno)."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None and (m := OS_ERROR_RE.search(str(e))):
        code = int(m.group(1))
    if code in USER_ERRNOS:
        return InputError(f"{path} — cannot write: {os.strerror(code)}")
    if isinstance(e, RuntimeError) and "file write failed" in str(e):
        return InputError(f"{path} — cannot write (is the disk full or the folder read-only?)")
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; outputs are for the group to read as any other file the user writes
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to a temporary sibling, then rename it over `path`: readers see old or new, never half."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder to fill; on success it replaces `path` in one rename."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            yield tmp
            tmp.chmod(0o777 & ~_umask())
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# `.NAME.XXXXXXXX.tmp` (atomic_write) and `.NAME.XXXXXXXX` (atomic_dir): tempfile's 8 random characters
TEMP_RE = re.compile(r"\..+\.[a-z0-9_]{8}(\.tmp)?")


def is_temp(path: Path) -> bool:
    """A temporary sibling of an atomic write (a kill mid-write leaves one; nothing may read it)."""
    return TEMP_RE.fullmatch(path.name) is not None and (path.is_dir() != path.name.endswith(".tmp"))


def remove_stale_temps(folder: str | Path) -> None:
    """Remove what killed atomic writes left in `folder`. Only for a folder this process holds (a
    `FolderLock`): another writer's temp file in flight would be lost."""
    folder = Path(folder)
    for p in folder.iterdir() if folder.is_dir() else []:
        if is_temp(p) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif is_temp(p):
            p.unlink(missing_ok=True)


class FolderLock:
    """One `mevqa eval` (or `mevqa train`) per output folder: a second one would interleave and compact the
    same file, or overwrite the other's adapter. Held, the folder is ours: temp files that a killed atomic
    write left in it are removed."""

    def __init__(self, out: Path, command: str = "mevqa eval"):
        with disk_errors(out):
            out.mkdir(parents=True, exist_ok=True)
            self._path = out / ".lock"
            self._f = self._path.open("a+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            other = self._f.read().strip() or "another process"
            self._f.close()
            raise InputError(
                f"--out {out} — in use by {other}; wait for it or choose another --out"
            ) from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"{command}, pid {os.getpid()} on {platform.node()}")
        self._f.flush()
        remove_stale_temps(out)

    def release(self) -> None:
        """Unlocked and gone: a finished run leaves no lock file behind."""
        self._path.unlink(missing_ok=True)
        self._f.close()


def write_mp4(path: str | Path, frames: Iterable[Any], fps: float) -> Path:
    """BGR uint8 frames (arrays, all one size) as an mp4v video at `fps`, streamed: the one place mevqa
    writes a video (SynthME, benchmarks, the video_url data URL, tests)."""
    import cv2  # most commands never write a video

    path = Path(path)
    writer = None
    try:
        for f in frames:
            if writer is None:
                h, w = f.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise InputError(f"{path} — OpenCV cannot open an mp4v writer there")
            writer.write(f)
    finally:
        if writer is not None:
            writer.release()
    return path
