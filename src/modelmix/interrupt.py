"""Ctrl-C during a merge: a request the engine honours at safe points, not an exception at any line.

Python turns SIGINT into a KeyboardInterrupt raised in the main thread at whatever line it is running.
While worker and I/O threads write into a merge's temporary output directory that is unsafe: the main
thread abandoned a ``join``, closed the output's descriptors and removed the directory while workers were
still computing and writing, and if the interpreter then finalised while a worker was inside a torch op,
that thread died reacquiring the GIL inside a C++ destructor: ``terminate called without an active
exception``, exit 134.

So from the moment a merge starts writing until its output is renamed into place, :func:`deferred` swaps
the handler: SIGINT only sets :attr:`Interrupt.requested`. The executor's workers check it before every
unit and row chunk and stop, the main thread stops scheduling and joins every worker, and only then is
KeyboardInterrupt raised (:meth:`Interrupt.check`); the writer's ``abort`` joins its I/O threads before it
closes the files and removes the directory. More Ctrl-C during that cleanup change
nothing: the cleanup is bounded by one chunk per worker, or the whole-tensor method call a worker is in.
After the rename (the commit) an interrupt is too late to undo anything and is ignored.

SIGTERM and SIGHUP (``kill``, a job scheduler's preemption, a closed terminal) are handled the same way
while their action is the default one, which would end the process on the spot and leave the temporary
directory behind; the CLI then exits with 128 + the signal's number, as the default action would.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

_OTHER_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Interrupt:
    """SIGINT state of one merge; ``handler`` is what SIGINT runs while it is installed."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal that asked to stop (SIGINT, SIGTERM or SIGHUP)
        self.others: dict[int, Any] = {}  # SIGTERM/SIGHUP -> the handler they had before
        self.requested = False  # a Ctrl-C arrived
        self.committed = False  # the output is in place: later Ctrl-C are ignored
        self.prev: Any = None  # the handler install() replaced

    def handler(self, signum: int, frame: Any) -> None:
        global _last_signum
        if not self.committed:
            self.requested = True  # attribute stores only: nothing here can block or be left half done
            self.signum = self.signum or signum
            _last_signum = self.signum

    def is_set(self) -> bool:
        """Whether the work should stop (``threading.Event``'s spelling, so either can be a cancel flag)."""
        return self.requested and not self.committed

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C is pending (call only where stopping is safe)."""
        if self.is_set():
            raise KeyboardInterrupt

    def commit(self) -> None:
        """The output is in place: from now on Ctrl-C is too late and is ignored."""
        self.committed = True


def _current() -> Interrupt | None:
    """The Interrupt installed for SIGINT -- or, where SIGINT is ignored (a background job), for SIGTERM."""
    for sig in (signal.SIGINT, *_OTHER_SIGNALS):
        owner = getattr(signal.getsignal(sig), "__self__", None)
        if isinstance(owner, Interrupt):
            return owner
    return None


_last_signum = 0  # the signal behind the latest request (for the CLI's exit code)


def exit_code() -> int:
    """128 + the number of the signal that stopped the merge (130 for Ctrl-C), as the default action gives."""
    return 128 + (_last_signum or signal.SIGINT)


_KEEP: Any = object()  # deferred() left SIGINT's handler alone


def _reset_last() -> None:
    global _last_signum
    _last_signum = 0


def _take_others(it: Interrupt) -> None:
    """Route SIGTERM/SIGHUP to ``it`` where they still have the default (process-ending) action."""
    for sig in _OTHER_SIGNALS:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                it.others[sig] = signal.signal(sig, it.handler)
        except (OSError, ValueError):
            pass


def _give_back_others(it: Interrupt) -> None:
    for sig, prev in it.others.items():
        try:
            signal.signal(sig, prev)
        except (OSError, ValueError):
            pass
    it.others.clear()


_finished: Interrupt | None = None  # the last installed Interrupt, once its merge committed and it was removed
_atexit_registered = False


def install() -> Interrupt:
    """Make an Interrupt SIGINT's handler (for the CLI's merge command) until :func:`uninstall`: in the
    main thread, when SIGINT has Python's default handler (an ignored SIGINT stays ignored).

    Installed before the merge imports torch (and numba, later): a KeyboardInterrupt raised at a random
    point of their imports came out as an unrelated ImportError ("cannot load module more than once per
    process"), RecursionError or, later, AttributeError from a half-initialised numpy, or was lost (the
    merge ran to completion); a request recorded there is honoured at the merge's first check. :func:`deferred` shares it, so it stays in force, committed after
    the merge's commit, up to ``uninstall`` -- the merge command prints its summary in that time. At
    interpreter exit SIGINT is ignored (an atexit hook): while Python finalises it restores the default
    action, termination by the signal, and a Ctrl-C there would kill a process whose merge had completed.
    """
    global _finished, _atexit_registered, _last_signum
    _finished = None
    _last_signum = 0
    it = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        return it
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # ignored (a background job's) or
        it.prev = signal.signal(signal.SIGINT, it.handler)             # someone else's: leave SIGINT so
    _take_others(it)  # SIGTERM/SIGHUP in any case while they would end the process on the spot
    if not _atexit_registered:
        import atexit

        atexit.register(ignore)
        _atexit_registered = True
    return it


def uninstall(it: Interrupt) -> None:
    """Put back the handler ``install`` replaced (in-process callers of the CLI get theirs back)."""
    global _finished
    if it.prev is not None:
        signal.signal(signal.SIGINT, it.prev)
    _give_back_others(it)
    if it.committed:
        _finished = it


def finished() -> bool:
    """Whether the CLI's merge completed and nothing was armed since: a KeyboardInterrupt reaching the CLI
    now came after the output was in place (in the few bytecodes between ``uninstall`` and exit)."""
    return _finished is not None


@contextlib.contextmanager
def deferred() -> Iterator[Interrupt]:
    """Within the block, SIGINT (and SIGTERM/SIGHUP) set ``requested`` instead of raising or killing.

    Takes effect in the main thread: for SIGINT when it has Python's default handler, for SIGTERM/SIGHUP
    when they have the default action (installing and restoring them), or through an installed
    :class:`Interrupt` (sharing it, and a request it recorded before: the block should start with
    ``check()``).
    Elsewhere -- another thread, a custom handler -- the Interrupt yielded is never set and Ctrl-C behaves
    as the handler decides; the engine's cleanup then still joins every thread before it removes anything.
    """
    global _finished
    _finished = None
    if threading.current_thread() is not threading.main_thread():
        yield Interrupt()  # signals are delivered to the main thread only: nothing to defer here
        return
    shared = _current()
    if shared is not None:  # the CLI's install(): stays in force (committed after a commit) until uninstalled
        yield shared
        if shared.committed:
            _finished = shared
        return
    it = Interrupt()
    _reset_last()
    sigint_is_default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    prev = signal.signal(signal.SIGINT, it.handler) if sigint_is_default else _KEEP
    _take_others(it)  # SIGTERM/SIGHUP also where SIGINT is ignored (a background job) or someone else's
    try:
        yield it
        if it.committed:
            _finished = it  # a signal arriving after the output is in place came too late to abort
    finally:
        if prev is not _KEEP:
            signal.signal(signal.SIGINT, prev)
        _give_back_others(it)


def reset() -> None:
    """Forget the previous command's outcome (the CLI calls this first: one process may run several)."""
    global _finished
    _finished = None
    _reset_last()


def ignore() -> None:
    """Ignore SIGINT from now on (main thread): for a process that has finished its work and is exiting.

    Python restores the default action, termination by the signal, while it finalises; an ignored signal
    stays ignored, so a late Ctrl-C can neither kill the exiting process nor raise in an atexit handler
    (atexit hooks run last-registered first, so this one runs before the others).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def uninterrupted(fn: Callable[[], object], on_interrupt: Callable[[], object] | None = None) -> bool:
    """Call ``fn`` until it returns without a KeyboardInterrupt (calling ``on_interrupt`` after each one);
    whether one arrived.

    For idempotent waits that must complete before what they wait for is torn down, in case Ctrl-C was
    not deferred: ``Event.wait``, ``Future.result``. Not for ``Thread.join`` on a running thread: in
    Python 3.11 an interrupted join marks the still-running thread stopped, and every later join -- also
    the interpreter's at exit -- returns at once (what let the interpreter finalise under a worker that was
    inside a torch op: ``terminate called without an active exception``).
    """
    hit = False
    while True:
        try:
            fn()
            return hit
        except KeyboardInterrupt:
            hit = True
            if on_interrupt is not None:
                on_interrupt()
