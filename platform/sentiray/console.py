"""What a person at the terminal sees: sentiray's own lines and progress bars, nothing else.

Ray, Ray Train, Ray Data, DeepSpeed and torch write a great deal to stdout and stderr:
worker output forwarded to the driver, per-report lines, banners, warnings. In quiet mode
(:func:`quiet`) file descriptors 1 and 2 of this process are pointed at a log file, so all
of that (Python or C, this process or forwarded from workers) lands there, and sentiray
writes to the terminal through the stream kept here (:func:`say`, :func:`progress`).
``--verbose`` skips the redirection: everything is live, as before.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

_console: TextIO | None = None  # the terminal while quiet() is active
_log_path: str | None = None


def stream() -> TextIO:
    """Where sentiray's own output goes: the terminal (even while quiet)."""
    return _console or sys.stdout


def is_quiet() -> bool:
    return _console is not None


def log_path() -> str | None:
    return _log_path


def say(message: str = "") -> None:
    out = stream()
    out.write(message + "\n")
    out.flush()


def warn(message: str) -> None:
    """An error or warning line for the person at the terminal (stderr unless quiet)."""
    out = _console or sys.stderr
    out.write(message + "\n")
    out.flush()


def progress(total: int | None, desc: str, unit: str = "it", **kwargs: Any):
    """A tqdm bar on the terminal (rate, ETA), whatever quiet mode did to stdout/stderr."""
    from tqdm import tqdm

    kwargs.setdefault("disable", None)  # no bar where the terminal is not one (a pipe, a log)
    return tqdm(
        total=total, desc=desc, unit=unit, file=stream(), dynamic_ncols=True, leave=True, mininterval=1.0, **kwargs
    )


def quiet_progress(total: int | None, desc: str, unit: str = "it"):
    """A bar while quiet, else None: outside quiet mode the step prints its own progress lines."""
    return progress(total, desc, unit) if is_quiet() else None


@contextlib.contextmanager
def quiet(path: str, enabled: bool = True) -> Iterator[str | None]:
    """Send everything written to fds 1 and 2 to ``path`` (appended); sentiray's own lines
    still reach the terminal. Yields the log path (None when not enabled)."""
    global _console, _log_path
    if not enabled or _console is not None:
        yield _log_path
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = io.TextIOWrapper(os.fdopen(os.dup(saved_out), "wb", buffering=0), write_through=True)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    # Python-level writers too (sys.stdout may not be fd 1, e.g. under a test runner's capture)
    saved_streams = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
    _console, _log_path = terminal, os.path.abspath(path)
    try:
        yield _log_path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        _console, _log_path = None, None
        terminal.close()
