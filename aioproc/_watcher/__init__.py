"""The child watcher: one per process, it reaps the children aioproc started and no other.

Reaping rules, each learned from an incident in a peer (``FIELD_NOTES.md`` §1):

* Wait for one pid at a time, never ``waitpid(-1)``, and install no SIGCHLD
  handler: those steal the children of ``subprocess.Popen`` and other libraries.
* Learn of the exit from an fd that turns readable (a pidfd on Linux, a kqueue on
  macOS, or a pipe closed by a waiter thread elsewhere), so that every event
  loop, in any thread, waits the same way and no thread is needed per child
  where the kernel can help.
* Reap and publish the return code under one lock, and signal under the same
  lock only while the return code is unset: a reaped pid may already belong to
  an unrelated process.
* In a child made by ``os.fork()``, forget every parent's child.
* A finalizer (``__del__``) takes no lock and does no work that could re-enter:
  from CPython 3.12 on a collection can run right after any call, including one
  made while this thread holds ``_registry_lock`` or a child's lock, and these
  locks are not re-entrant. A finalizer hands its child to :func:`release_later`,
  a bare ``deque.append``, and the next safe point releases it
  (:func:`release_dropped`: the next spawn, or the next call into aioproc).

The mechanism is chosen once per process: ``pidfd`` where it works, else
``kqueue`` where it exists, else ``thread``. The environment variable
``AIOPROC_CHILD_WATCHER`` (``pidfd``, ``kqueue`` or ``thread``) forces one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections import deque
from typing import Protocol

from ._thread import WaiterThread

__all__ = [
    "Child",
    "WaiterThread",
    "active_children",
    "mechanism",
    "reap_orphans",
    "release_dropped",
    "release_later",
    "sigchld_ignored",
    "watch",
]

_ENV_VAR = "AIOPROC_CHILD_WATCHER"
_MECHANISMS = ("pidfd", "kqueue", "thread")


class _Notifier(Protocol):
    """A child's exit notification: an fd readable once the child has exited."""

    def fileno(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def close(self) -> None: ...
    def close_after_fork(self) -> None:
        """Close in a forked child, where no other thread runs and no lock is to be taken."""
        ...


_mechanism: str | None = None
_registry_lock = threading.Lock()
_children: dict[int, Child] = {}
# Children whose Process object was dropped while they still ran. Like
# subprocess._active, they are polled at the next spawn so none stays a zombie.
_orphans: set[Child] = set()
# Children whose Process was finalized: released at the next safe point.
_dropped: deque[Child] = deque()


def _choose_mechanism() -> str:
    # Each module is imported only when it is asked about: the first child of a
    # process (a pool's template, say) waits for this.
    forced = os.environ.get(_ENV_VAR, "").strip().lower()
    if forced:
        if forced not in _MECHANISMS:
            choices = ", ".join(_MECHANISMS)
            raise ValueError(f"{_ENV_VAR}={forced!r} names no child watcher; use one of {choices}")
        if forced == "pidfd":
            from . import _pidfd

            if not _pidfd.available():
                raise RuntimeError(f"{_ENV_VAR}=pidfd, but pidfd_open() is not usable here")
        if forced == "kqueue":
            from . import _kqueue

            if not _kqueue.available():
                raise RuntimeError(f"{_ENV_VAR}=kqueue, but this platform has no kqueue")
        return forced
    from . import _pidfd

    if _pidfd.available():
        return "pidfd"
    from . import _kqueue

    if _kqueue.available():
        return "kqueue"
    return "thread"


def mechanism() -> str:
    """Name the mechanism this process uses to learn that its children exited."""
    global _mechanism
    if _mechanism is None:
        _mechanism = _choose_mechanism()
    return _mechanism


def _open_notifier(pid: int) -> _Notifier:
    name = mechanism()
    if name == "pidfd":
        from ._pidfd import PidfdNotifier

        return PidfdNotifier(pid)
    if name == "kqueue":
        from ._kqueue import KqueueNotifier

        return KqueueNotifier(pid)
    from ._thread import ThreadNotifier

    return ThreadNotifier(pid)


class Child:
    """One child we started and have not yet forgotten.

    ``returncode`` is set once, under the child's lock, by whoever first learns
    the exit status. Usually that is the reaping ``waitpid``. A child that leads
    its own process group is the exception: its status is read with
    ``waitid(WNOWAIT)`` and it stays a zombie until :meth:`release`, because its
    unreaped pid is what keeps the group id from being reused, and a shutdown
    may still have to signal the rest of the group after the leader is gone.

    Signals go out under the same lock and only while the child is unreaped.
    """

    __slots__ = ("_lock", "_notifier", "anchors_group", "pid", "reaped", "returncode")

    def __init__(self, pid: int, notifier: _Notifier, *, anchors_group: bool) -> None:
        self.pid = pid
        self.anchors_group = anchors_group
        self.returncode: int | None = None
        self.reaped = False
        self._notifier: _Notifier | None = notifier
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} returncode={self.returncode} reaped={self.reaped}>"

    @property
    def exit_fd(self) -> int:
        """An fd that turns readable once the child has exited (reaped or not)."""
        if self._notifier is None:
            raise RuntimeError(f"child {self.pid} is no longer watched")
        return self._notifier.fileno()

    def send_signal(self, sig: int, *, group: bool = False) -> bool:
        """Signal the child, or the group it leads; return whether a signal was sent.

        Like ``Popen.send_signal``, signalling the child alone stops once its exit
        status is known. The group can be signalled until the leader is reaped.
        """
        with self._lock:
            if self.reaped or self._notifier is None:
                return False
            try:
                if group:
                    if not self.anchors_group:
                        raise ValueError(f"process {self.pid} does not lead its own process group")
                    os.killpg(self.pid, sig)
                elif self.returncode is None:
                    self._notifier.send_signal(sig)
                else:
                    return False
            except ProcessLookupError:
                return False
            return True

    def poll(self) -> int | None:
        """Learn the exit status if the child has exited, without blocking."""
        if self.returncode is None and self._collect(os.WNOHANG, keep_zombie=self.anchors_group):
            _warn_status_lost(self.pid)
        return self.returncode

    def wait_status(self) -> int:
        """Collect the status of a child known to have exited (``exit_fd`` was readable).

        It may block, as trio's does: on macOS kqueue can report the exit a moment
        before ``waitpid(WNOHANG)`` is able to see it.
        """
        lost = False
        while self.returncode is None:
            lost = self._collect(0, keep_zombie=self.anchors_group)
        if lost:
            _warn_status_lost(self.pid)
        return self.returncode

    def release(self) -> None:
        """Forget the child: reap it if it has exited, else leave it to the orphan list.

        The caller must first wake any task waiting on ``exit_fd``.
        """
        lost = False
        if not self.reaped:
            options = 0 if self.returncode is not None else os.WNOHANG
            lost = self._collect(options, keep_zombie=False)
        with self._lock:
            notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()
        if not self.reaped:
            with _registry_lock:
                if self.pid in _children:
                    _orphans.add(self)
        if lost:
            _warn_status_lost(self.pid)

    def _collect(self, options: int, *, keep_zombie: bool) -> bool:
        """Wait as ``options`` say; return whether the exit status turned out to be lost.

        ECHILD means the child was reaped without us: by the kernel when SIGCHLD
        is ignored, or by someone else's ``waitpid``. Its status is gone, and it
        counts as 0, as ``subprocess`` and trio report it. The caller warns (see
        :func:`_warn_status_lost`) once the status is stored and its own cleanup done.
        """
        lost = False
        with self._lock:
            if self.reaped:
                return False
            try:
                if keep_zombie:
                    result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | options)
                    if result is None or result.si_pid == 0:
                        return False
                    code = result.si_status
                    self.returncode = code if result.si_code == os.CLD_EXITED else -code
                    return False
                pid, status = os.waitpid(self.pid, options)
            except ChildProcessError:
                status = None
                lost = self.returncode is None
            else:
                if pid == 0:
                    return False
            self.reaped = True
            if self.returncode is None:
                self.returncode = 0 if status is None else os.waitstatus_to_exitcode(status)
        with _registry_lock:
            _children.pop(self.pid, None)
            _orphans.discard(self)
        return lost


class _GoneNotifier:
    """The notifier of a child reaped before it could be watched: readable at once."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd, write_fd = os.pipe()
        os.close(write_fd)  # EOF: readable

    def fileno(self) -> int:
        return self._fd

    def send_signal(self, sig: int) -> None:
        pass  # the pid is no longer ours: never signal it

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    close_after_fork = close


def sigchld_ignored() -> bool:
    """Whether SIGCHLD is ignored here, so the kernel reaps our children itself."""
    return signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN


def _warn_status_lost(pid: int) -> None:
    """Say that someone else reaped ``pid``; nothing when SIGCHLD is ignored, which is
    a choice of the program's (common in daemons), not a bug to report."""
    if not sigchld_ignored():
        warnings.warn(
            f"child {pid} was reaped by someone else (a waitpid(-1) or a SIGCHLD handler in "
            "this process?); its exit status is lost, reporting 0 as subprocess does",
            RuntimeWarning,
            stacklevel=4,
        )


def watch(pid: int, *, anchors_group: bool = False) -> Child:
    """Start watching a child we just spawned (``anchors_group``: it leads its own group).

    If the exit notification cannot be set up (EMFILE, no thread left), the
    child is killed and reaped before the error propagates: a child nobody
    can wait for would become a zombie or an orphan.
    """
    if _dropped:
        release_dropped()
    if _orphans:
        reap_orphans()
    try:
        notifier: _Notifier = _open_notifier(pid)
    except ProcessLookupError:
        # Already exited and reaped without us: SIGCHLD is ignored, or a thief
        # was quick. Its status is lost; the next wait on it says so.
        notifier = _GoneNotifier()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    child = Child(pid, notifier, anchors_group=anchors_group)
    with _registry_lock:
        _children[pid] = child
    return child


def release_later(child: Child) -> None:
    """Release ``child`` at the next safe point; for finalizers, which must take no lock.

    ``deque.append`` is atomic, so this cannot block or re-enter anything.
    """
    _dropped.append(child)


def release_dropped() -> None:
    """Release the children handed to :func:`release_later`. Call it holding no lock."""
    while _dropped:
        try:
            child = _dropped.popleft()
        except IndexError:  # another thread took the last one
            return
        child.release()


def reap_orphans() -> None:
    """Reap orphaned children that have exited since we last looked."""
    if _dropped:
        release_dropped()
    with _registry_lock:
        orphans = list(_orphans)
    for child in orphans:
        child.release()


def active_children() -> list[Child]:
    """The children this process started and has not reaped yet."""
    with _registry_lock:
        return list(_children.values())


def _forget_after_fork() -> None:
    """In a child of ``os.fork()``: the parent's children are not ours.

    Their exit fds were inherited (close-on-exec does not apply to a fork
    without exec) and are closed here, without touching any event loop.
    """
    global _registry_lock
    _registry_lock = threading.Lock()
    for child in _children.values():
        notifier, child._notifier = child._notifier, None
        child._lock = threading.Lock()
        if notifier is not None:
            with contextlib.suppress(OSError):
                notifier.close_after_fork()
    _children.clear()
    _orphans.clear()
    _dropped.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
