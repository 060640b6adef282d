"""Writing files so that a reader never sees a torn one: one helper for every output of the package.

A file is written to a temporary file in the destination's folder, flushed to disk, given the permissions a plain
``open(path, "w")`` would have given it, and renamed over the destination (``os.replace``), so the destination holds
either its old content or all of the new one, and teammates can read it as they could read any other output.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (``/proc/self/status`` on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the portable way: set and restore (not thread-safe, hence the /proc path first)
    os.umask(mask)
    return mask


def plain_open_mode(path: str | os.PathLike) -> int:
    """Permission bits ``open(path, "w")`` leaves on ``path``.

    An existing file keeps its own, a new one gets ``0o666 & ~umask`` (``rw-r--r--`` under the usual umask 022).
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def share_like_new_files(root: str | os.PathLike) -> None:
    """Give ``root`` and everything under it the modes that ``mkdir`` / ``open`` would have given under the umask.

    ``tempfile.mkdtemp`` and ``mkstemp`` create private entries (0700 / 0600) so that nobody sees a half-written
    output; once it is complete it should be as readable by the team as any other file the process writes:
    directories ``0777 & ~umask``, files ``0666 & ~umask``.
    """
    mask = current_umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), dir_mode)
        for f in files:
            if not os.path.islink(os.path.join(folder, f)):
                os.chmod(os.path.join(folder, f), file_mode)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems cannot open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` with ``write(binary file)`` atomically; returns ``path``.

    The content goes through a temporary file in the same folder, flushed to disk, then ``os.replace``: ``path`` holds
    either its old content or all of the new one (a full disk or any other error leaves no partial file under
    ``path``, and the temporary file is removed). The file gets the permissions a plain ``open`` would give (see
    :func:`plain_open_mode`); the parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = plain_open_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600: give the final file what open() would have
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_atomic`. Returns ``path``."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))
