"""The portable fallback: one thread per child, blocked in ``waitid(WNOWAIT)``.

``WNOWAIT`` leaves the child a zombie, so the pid stays ours until we reap it
and signalling it stays safe. The thread then closes the write end of a pipe:
the read end turns readable (EOF), which every event loop can wait for, so the
rest of aioproc treats this exactly like a pidfd. This is the pattern of
``trio/_subprocess_platform/waitid.py``.
"""

from __future__ import annotations

import os
import threading

__all__ = ["ThreadNotifier"]


def _wait_then_close(pid: int, write_fd: int) -> None:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass  # already reaped (by us through poll(), or stolen): wake the waiter anyway
    finally:
        os.close(write_fd)


class ThreadNotifier:
    __slots__ = ("_pid", "_read_fd")

    def __init__(self, pid: int) -> None:
        read_fd, write_fd = os.pipe()
        try:
            threading.Thread(
                target=_wait_then_close,
                args=(pid, write_fd),
                name=f"aioproc waitid({pid})",
                daemon=True,
            ).start()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        self._pid = pid
        self._read_fd = read_fd

    def fileno(self) -> int:
        return self._read_fd

    def send_signal(self, sig: int) -> None:
        # Safe without a pidfd: the caller only signals while the child is not
        # yet reaped, and only we reap it, so the pid cannot have been reused.
        os.kill(self._pid, sig)

    def close(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
