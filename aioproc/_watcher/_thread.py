"""The portable fallback: one thread per child, blocked in ``waitid(WNOWAIT)``.

``WNOWAIT`` leaves the child a zombie, so the pid stays ours until we reap it
and signalling it stays safe. The thread then makes an fd readable, which every
event loop can wait for, so the rest of aioproc treats this exactly like a
pidfd. This is the pattern of ``trio/_subprocess_platform/waitid.py``.

The fd is an eventfd where there is one (a single fd per child matters with
thousands of children), else the read end of a pipe whose write end the
thread closes.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["ThreadNotifier", "WaiterThread"]


class WaiterThread(threading.Thread):
    """A waiter. Its class tells ``aioproc.fork`` that forking beside it is safe:
    it waits in ``waitid`` holding nothing, and a forked child does not take the
    lock it holds for an instant after (see ``close_after_fork``)."""


def _wait_for_exit(pid: int) -> None:
    # ChildProcessError: already reaped (by us through poll(), or stolen). The
    # waiter must be woken anyway.
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


class ThreadNotifier:
    __slots__ = ("_fd", "_lock", "_pid", "_write_fd")

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._lock = threading.Lock()
        if hasattr(os, "eventfd"):
            self._fd = os.eventfd(0, os.EFD_CLOEXEC)
            self._write_fd = -1
        else:
            self._fd, self._write_fd = os.pipe()
        try:
            WaiterThread(target=self._run, name=f"aioproc waitid({pid})", daemon=True).start()
        except BaseException:
            self.close()
            if self._write_fd >= 0:
                os.close(self._write_fd)
            raise

    def _run(self) -> None:
        _wait_for_exit(self._pid)
        if self._write_fd >= 0:
            # Marked closed first: a child forked after this must not close the
            # number, which may be someone else's by then (close_after_fork).
            write_fd, self._write_fd = self._write_fd, -1
            os.close(write_fd)
            return
        # The lock orders this write before close(): once closed, the fd number
        # may already name someone else's file.
        with self._lock:
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    def fileno(self) -> int:
        return self._fd

    def send_signal(self, sig: int) -> None:
        # Safe without a pidfd: the caller only signals while the child is not
        # yet reaped, and only we reap it, so the pid cannot have been reused.
        os.kill(self._pid, sig)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def close_after_fork(self) -> None:
        # The waiter thread is not in a forked child, and may have held the lock at
        # the fork: taking it would hang forever. Nothing else can race us here.
        self._lock = threading.Lock()
        self.close()
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
