"""Atomic writes: every file the project writes appears whole or not at all.

Write to a temporary name in the same folder, then ``os.replace`` (atomic on POSIX and Windows).
A whole run writes into a hidden staging folder ``.NAME-staging-PID-XXXX`` beside its output folder;
Ctrl-C and SIGTERM (cli/main.py turns it into a KeyboardInterrupt) remove it on the way out. A run
killed outright (SIGKILL, power loss) cannot; the next run into the same folder removes the staging
folders whose process is gone and reports those of runs still alive (:func:`clean_stale_staging`).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from PETDiffusionLib.errors import InputError

log = logging.getLogger(__name__)

_STAGING = "-staging-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    The temporary name keeps the full suffix (``.nii.gz``) so that writers that choose the format
    by extension still work.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is an existing folder; give a file name", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"cannot create the folder {path.parent}: a file of that name is in the "
                         "way", path) from None
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates 0600; give the final file the usual permissions (0666 less the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_staging(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of ``out_dir`` left by killed runs; returns those removed.

    A staging folder whose process id (in its name) is still running belongs to a run in progress:
    it is reported (warning), not touched. Folders in the older name form without a process id are
    reported only.
    """
    out_dir = Path(out_dir)
    removed = []
    if not out_dir.parent.is_dir():
        return removed
    prefix = f".{out_dir.name}{_STAGING}"
    for item in sorted(out_dir.parent.glob(f"{glob.escape(prefix)}*")):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)-.*", item.name)
        if not item.is_dir():
            continue
        if m is None:
            log.warning("%s: a staging folder of an older or unknown run; remove it by hand if no "
                        "run is writing %s", item, out_dir)
        elif _pid_alive(int(m.group(1))):
            log.warning("%s: another run (process %s) is writing %s now", item, m.group(1), out_dir)
        else:
            shutil.rmtree(item, ignore_errors=True)
            log.warning("removed %s, left by a run (process %s) that was killed", item, m.group(1))
            removed.append(item)
    return removed


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder beside ``out_dir`` in which a whole run writes its outputs.

    On success its files are moved into ``out_dir`` (created if needed, existing files of the same
    names replaced); on any error, Ctrl-C or SIGTERM the staging folder is removed, so a failed or
    cancelled run leaves nothing half-written behind. ``out_dir`` is checked first (not an existing
    file, its folder writable), and stale staging folders of killed runs are cleaned.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("the output folder exists and is a file; give a folder name (or remove "
                         "the file)", out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(out_dir)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_STAGING}{os.getpid()}-",
                                      dir=out_dir.parent))
    except PermissionError as exc:
        raise InputError(f"cannot write the output: no permission to create files in "
                         f"{exc.filename or out_dir.parent}; choose a folder you may write to",
                         out_dir) from None
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"cannot create the output folder: {exc.filename or out_dir.parent} is a "
                         "file, not a folder", out_dir) from None
    try:
        yield stage
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(stage.iterdir()):
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
