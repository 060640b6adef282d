"""Child processes of a study: one ``baldro-pl`` command each, its output in a log file, its peak memory measured.

Every fine-tune, reference evaluation and cell runs as ``python -m baldro_pl.cli ...`` in its own session (process
group), so a crash of one cannot take the runner down, and the runner can stop a whole child (with its own children)
on Ctrl-C / SIGTERM. The child is reaped with ``os.wait4``, which gives its own resource usage: ``ru_maxrss``, the peak
resident memory of that process (the number the ``peak_rss_mb`` column reports; GPU memory is reported by the child
itself, :class:`~baldro_pl.study.callbacks.StudyCellReport`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

#: seconds a child gets between SIGTERM and SIGKILL when the runner stops it.
TERMINATE_GRACE_S = 10.0


def cli_command(*args: str) -> list[str]:
    """The ``baldro-pl`` command line of this interpreter (``python -m baldro_pl.cli``: no PATH lookup)."""
    return [sys.executable, "-m", "baldro_pl.cli", *args]


def child_env(workers: int) -> dict[str, str]:
    """The environment of a child: unbuffered output; CPU threads split between the workers unless already set."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    return env


def _max_rss_mb(ru_maxrss: int) -> float:
    """``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    return ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


class Job:
    """A running ``baldro-pl`` child whose output goes to ``log_path`` (and to ``echo`` if given).

    Args:
        command: the command line.
        log_path: file that receives stdout and stderr.
        env: the child's environment.
        echo: a text stream that also receives the output (e.g. ``sys.stdout``: Lightning's progress bar on screen).
    """

    def __init__(self, command: Sequence[str], log_path: Path, env: dict[str, str], echo: IO[str] | None = None):
        self.command = list(command)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.returncode: int | None = None
        self.wall_s: float | None = None
        self.peak_rss_mb: float | None = None
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by the reader thread at EOF
        self._log.write(("$ " + " ".join(self.command) + "\n").encode())
        self._log.flush()
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.pid = self._process.pid
        self._reader = threading.Thread(target=self._copy_output, args=(echo,), daemon=True)
        self._reader.start()

    def _copy_output(self, echo: IO[str] | None) -> None:
        stream = self._process.stdout
        assert stream is not None
        try:
            while True:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    break
                self._log.write(chunk)
                self._log.flush()
                if echo is not None:
                    try:
                        echo.write(chunk.decode(errors="replace"))
                        echo.flush()
                    except (OSError, ValueError):
                        echo = None
        finally:
            self._log.close()
            stream.close()

    def poll(self) -> int | None:
        """The exit code once the child has ended (reaped with ``wait4`` for its peak memory), else None."""
        if self.returncode is not None:
            return self.returncode
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        self._finish(status, usage)
        return self.returncode

    def wait(self, poll_s: float = 0.2) -> int:
        """Block until the child ends (interruptible: signals reach the calling thread between polls)."""
        while (code := self.poll()) is None:
            time.sleep(poll_s)
        return code

    def _finish(self, status: int, usage: os.struct_rusage | None) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self._process.returncode = self.returncode  # reaped here: Popen must not wait for it again
        self.wall_s = time.monotonic() - self.start
        self.peak_rss_mb = None if usage is None else _max_rss_mb(usage.ru_maxrss)
        self._reader.join(timeout=5.0)

    def stop(self, grace_s: float = TERMINATE_GRACE_S) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``grace_s``; returns once it is reaped."""
        if self.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.poll() is not None:
                    return
                time.sleep(0.1)
        if self.poll() is None:  # still not reaped: block (SIGKILL cannot be ignored)
            _, status, usage = os.wait4(self.pid, 0)
            self._finish(status, usage)


class Interrupted(KeyboardInterrupt):
    """The runner got SIGTERM or SIGINT (``signum``); running children were stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class SignalGuard:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` in the main thread while active (a no-op in other threads).

    Inside :meth:`deferred` (starting a child and registering it) a signal is held back and raised on leaving the
    block, so that no child can be started without the runner knowing that it has to stop it.
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._depth = 0
        self._pending: int | None = None

    def _handler(self, signum: int, frame: object) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold SIGTERM / SIGINT back during the block; raise :class:`Interrupted` after it if one came."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
