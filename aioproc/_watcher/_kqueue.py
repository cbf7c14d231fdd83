"""macOS and the BSDs: a kqueue per child with ``EVFILT_PROC``/``NOTE_EXIT``.

A kqueue fd is itself readable once one of its events is pending, so the event
loop (asyncio's selector or trio's own kqueue) can wait on it like on a pidfd.
This follows ``trio/_subprocess_platform/kqueue.py``. It cannot be exercised on
the Linux machines the test suite runs on; the thread fallback covers the same
contract there.
"""

from __future__ import annotations

import os
import select
from typing import Any

__all__ = ["KqueueNotifier", "available"]


def available() -> bool:
    return hasattr(select, "kqueue")


class KqueueNotifier:
    __slots__ = ("_fd", "_kqueue", "_pid")

    def __init__(self, pid: int) -> None:
        self._pid = pid
        # select.kqueue only exists where kqueue does; typeshed knows it per platform.
        kqueue: Any = getattr(select, "kqueue")()  # noqa: B009
        event = getattr(select, "kevent")(  # noqa: B009
            pid,
            getattr(select, "KQ_FILTER_PROC"),  # noqa: B009
            getattr(select, "KQ_EV_ADD") | getattr(select, "KQ_EV_ONESHOT"),  # noqa: B009
            getattr(select, "KQ_NOTE_EXIT"),  # noqa: B009
        )
        self._kqueue: Any = None
        try:
            kqueue.control([event], 0)
        except ProcessLookupError:
            # The child is already a zombie: stand in an fd that is readable now.
            kqueue.close()
            read_fd, write_fd = os.pipe()
            os.close(write_fd)
            self._fd: int = read_fd
        except BaseException:
            kqueue.close()
            raise
        else:
            self._kqueue = kqueue
            self._fd = kqueue.fileno()

    def fileno(self) -> int:
        return self._fd

    def send_signal(self, sig: int) -> None:
        os.kill(self._pid, sig)

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._kqueue is not None:
            self._kqueue.close()
        else:
            os.close(self._fd)
        self._fd = -1

    close_after_fork = close
