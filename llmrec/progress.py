"""What a long step is doing, on stderr: a transient rich progress bar (counts where known, a spinner where not).

    from llmrec import progress

    with progress.step("embedding catalog", total=len(texts)) as advance:
        for chunk in chunks:
            ...
            advance(len(chunk))              # from any thread (asyncio.to_thread workers too)

    with progress.step("loading model all-MiniLM-L6-v2"):   # no total: a spinner and the time so far
        ...

When it shows: only while stderr is a terminal, and never with ``--quiet``/``-q`` (:func:`set_quiet`) or
``LLMREC_QUIET=1``. ``LLMREC_PROGRESS=1`` shows it even when stderr is not a terminal (a CI log that renders
ANSI, a test), ``LLMREC_PROGRESS=0`` never shows it; quiet wins over both.

The bar is transient: it is erased when the last open step ends. stdout is never touched (it is JSON for pipes);
lines written to ``sys.stderr`` while a bar shows are printed above it. Steps nest (each open step is one line
of the same display, in the order they opened), and may be opened and advanced from any thread. When nothing
shows, :func:`step` costs an environment lookup and an ``isatty``: rich is imported only when a bar is shown.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

QUIET_ENV = "LLMREC_QUIET"
FORCE_ENV = "LLMREC_PROGRESS"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})
#: redraws per second (low: a bar is for humans, and the machine may have 2 cores)
REFRESH_PER_SECOND = 8

Advance = Callable[..., None]

_quiet = False
_console: Any = None  # set_console(): where bars go instead of stderr (tests)
_lock = threading.RLock()
_bar: Any = None  # the rich Progress shown while any step is open
_open = 0


def _noop(n: float = 1) -> None:
    return None


def set_quiet(value: bool = True) -> bool:
    """Show no progress in this process (``--quiet``), or show it again; returns the previous setting."""
    global _quiet
    previous, _quiet = _quiet, bool(value)
    return previous


def is_quiet() -> bool:
    """True after ``set_quiet(True)`` or with ``LLMREC_QUIET=1``."""
    return _quiet or os.environ.get(QUIET_ENV, "").strip().lower() in _ON


def set_console(console: Any) -> Any:
    """Draw bars on this rich Console instead of stderr (None: stderr again); returns the previous one.

    A console made with ``force_terminal=True`` over a StringIO shows what a terminal would get."""
    global _console
    previous, _console = _console, console
    return previous


def enabled() -> bool:
    """Whether :func:`step` would show a bar now."""
    if is_quiet():
        return False
    force = os.environ.get(FORCE_ENV, "").strip().lower()
    if force in _OFF:
        return False
    if force in _ON or _console is not None or _bar is not None:  # a bar that shows: nested steps join it
        return True
    # while a bar shows, sys.stderr is rich's proxy printing above it (whose isatty says False): ask the terminal
    stream = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or replaced by something without isatty
        return False


@contextmanager
def step(description: str, total: float | None = None) -> Iterator[Advance]:
    """Show ``description`` while the block runs; yields ``advance(n=1)``, which counts ``n`` of ``total``
    done (with no total, a spinner: ``advance`` does nothing visible). Silent: ``advance`` is a no-op."""
    handle = _open_step(description, total) if enabled() else None
    if handle is None:
        yield _noop
        return
    try:
        yield handle.advance
    finally:
        _close_step(handle)


class _Handle:
    __slots__ = ("bar", "task", "closed")

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task, self.closed = bar, task, False

    def advance(self, n: float = 1) -> None:
        if self.closed:
            return
        try:
            self.bar.advance(self.task, n)  # rich's Progress takes its own lock: safe from any thread
        except KeyError:  # closed meanwhile by another thread
            pass


def _open_step(description: str, total: float | None) -> _Handle | None:
    global _bar, _open
    with _lock:
        try:
            if _bar is None:
                bar = _make_bar()
                bar.start()
                _bar = bar
            _open += 1
            return _Handle(_bar, _bar.add_task(description, total=total))
        except Exception:  # a bar is a nicety: never the reason a command fails
            if _open == 0 and _bar is not None:
                _stop(_bar)
                _bar = None
            return None


def _close_step(handle: _Handle) -> None:
    global _bar, _open
    with _lock:
        handle.closed = True
        _open -= 1
        if _open <= 0:  # the last step: stop (its last frame shows where it ended) and erase the display
            _open = 0
            if _bar is handle.bar:
                _bar = None
            _stop(handle.bar)
        try:
            handle.bar.remove_task(handle.task)
        except KeyError:
            pass


def _stop(bar: Any) -> None:
    try:
        bar.stop()
    except Exception:
        pass


def _make_bar() -> Any:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, Task,
                               TextColumn, TimeElapsedColumn)
    from rich.text import Text

    class Counted(ProgressColumn):
        """A column shown only for steps with a total (a spinner step has no bar nor counts)."""

        def __init__(self, column: ProgressColumn) -> None:
            super().__init__()
            self.column = column

        def render(self, task: Task) -> Any:
            return self.column.render(task) if task.total is not None else Text("")

    console = _console
    if console is None:
        forced = os.environ.get(FORCE_ENV, "").strip().lower() in _ON
        console = Console(stderr=True, force_terminal=True if forced else None)
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), Counted(BarColumn(bar_width=30)),
                    Counted(MofNCompleteColumn()), TimeElapsedColumn(), console=console, transient=True,
                    redirect_stdout=False, redirect_stderr=True, refresh_per_second=REFRESH_PER_SECOND)


__all__ = ["FORCE_ENV", "QUIET_ENV", "enabled", "is_quiet", "set_console", "set_quiet", "step"]
