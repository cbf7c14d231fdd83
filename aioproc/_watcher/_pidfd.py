"""Linux: a pidfd per child, readable once the child has exited, with no thread.

This is what trio (``_subprocess.py``) and asyncio 3.12+ (``_PidfdChildWatcher``)
do. ``pidfd_send_signal`` goes through the same fd, so a signal can never reach
another process that later got the same pid.
"""

from __future__ import annotations

import functools
import os
import signal

__all__ = ["PidfdNotifier", "available"]


@functools.cache
def available() -> bool:
    """Probe pidfd on ourselves, once: seccomp may refuse it (docker/for-linux#1142)."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(fd)
    return True


class PidfdNotifier:
    __slots__ = ("_fd",)

    def __init__(self, pid: int) -> None:
        self._fd = os.pidfd_open(pid)

    def fileno(self) -> int:
        return self._fd

    def send_signal(self, sig: int) -> None:
        signal.pidfd_send_signal(self._fd, sig)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    close_after_fork = close
