"""Atomic file writes for every engine: a crash or kill never leaves a half-written file.

Each file is written to a temp file beside it (``.<name>.<pid>-<random>.tmp``, created with
mode 0666 so the umask decides the final mode, unlike ``mkstemp``'s 0600), fsync'ed and
``os.replace``'d; :func:`atomic_write_many` writes several files as a group (all temps first,
then the renames). Temp files of a killed write are removed by :func:`remove_stale_temps` at
the next start, as are the ``.tmpXXXXXX`` files of ``safetensors.torch.save_file`` (which
writes through a 0600 temp file of its own: safetensors files are written here as bytes into
the project's temp file instead, :func:`safetensors_writer`). A failed write is an ``OSError``
naming the file and the cause, with its errno (ENOSPC for a full disk, EIO, EFBIG, EDQUOT)
even where torch's zip writer hides it.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9A-Za-z_-]{6,}\.tmp$")
# the temp file of safetensors' own save_file (Rust tempfile crate: ".tmp" + 6 alphanumerics),
# left in run directories by versions that wrote through it
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[0-9A-Za-z]{6}$")


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def remove_stale_temps(folder: str | os.PathLike, names: set[str] | None = None) -> list[Path]:
    """Delete the temp files an interrupted :func:`atomic_write` left in ``folder`` (call at
    start / resume, before anything writes there; ``names``: only those of these files).
    Without ``names`` (a run directory, which only the run writes to) also the nameless
    ``.tmpXXXXXX`` files of an interrupted ``safetensors.torch.save_file``. Returns what was
    removed."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _TEMP.match(p.name)
            ours = m and (names is None or m.group("name") in names)
            if (ours or (names is None and _SAFETENSORS_TEMP.match(p.name))) and p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
                log.info("removed %s (left by an interrupted write)", p)
    return gone


def _write_failure(e: BaseException, path: Path) -> OSError:
    """An OSError naming ``path`` and the cause (errno kept; safetensors' ``os error N``
    parsed; an errno-less failure on a nearly full file system is named ENOSPC)."""
    if isinstance(e, OSError) and e.errno is not None:
        return OSError(e.errno, e.strerror or str(e), str(path))
    code = re.search(r"os error (\d+)", str(e))
    if code:
        n = int(code.group(1))
        return OSError(n, os.strerror(n), str(path))
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < 64 * 2 ** 20:
        return OSError(errno.ENOSPC, f"No space left on device ({free} bytes free)", str(path))
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return OSError(errno.EIO, f"write failed ({type(e).__name__}: {msg[:200]})", str(path))


def _write_temp(path: Path, write: Callable[[str], None]) -> Path:
    """``write`` into a new temp file beside ``path`` (mode from the umask), fsync'ed."""
    tmp = _temp_path(path)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        return tmp
    except BaseException as e:
        err = _write_failure(e, path) if isinstance(e, Exception) else None
        tmp.unlink(missing_ok=True)
        if err is not None:
            raise err from e
        raise


def atomic_write_many(items: list[tuple[str | os.PathLike, Callable[[str], None]]]) -> None:
    """Write every ``(path, write)`` to a temp file first, then rename them in order: a crash
    before the renames leaves all old files; a crash between two renames leaves the earlier
    ones new (readers compare the stored steps). No temp file survives an exception."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, write in items:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            done.append((_write_temp(path, write), path))
    except BaseException:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in done:
        os.replace(tmp, path)
    for folder in {path.parent for _, path in done}:  # make the renames durable
        try:
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename over ``path``."""
    atomic_write_many([(path, write)])


class _Recorder:
    """A file whose failed writes are remembered: torch's zip writer turns them into
    ``unexpected pos ...``, losing the errno (ENOSPC, EIO, EFBIG, EDQUOT)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that fails with the OSError of the write that failed."""
    with open(path, "wb") as f:
        rec = _Recorder(f)
        try:
            torch.save(obj, rec)
        except RuntimeError:
            if rec.error is not None:
                raise rec.error from None
            raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch_save(obj, tmp))


def safetensors_writer(tensors: dict, metadata: dict | None = None) -> Callable[[str], None]:
    """A ``write`` for :func:`atomic_write` / :func:`atomic_write_many`: the safetensors bytes
    of ``tensors`` into the project's temp file (``save_file`` would write through a temp file
    of its own, mode 0600, that a kill leaves behind)."""
    def write(tmp: str) -> None:
        from safetensors.torch import save
        data = save(tensors, metadata=metadata)
        with open(tmp, "wb") as f:
            f.write(data)
    return write


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
