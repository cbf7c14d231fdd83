"""Run a command the way a hostile environment would: with signals ignored and blocked.

    python tests/hostile_signals.py COMMAND [ARGS...]

Ignored and blocked signals survive ``exec``, so whatever starts a test suite
can hand it dispositions and a mask that nobody in it chose. Seen in the wild:

* glibc's reserved signals 32 and 33 ignored (``pytest -n 2`` workers had bit 32
  set in ``SigIgn``). Python can neither set nor reset them: they are not in
  ``signal.valid_signals()``, and glibc's ``sigaction`` refuses them. So they
  are set here with the raw system calls.
* SIGINT ignored: a shell starts background jobs (``cmd &``) that way.
* SIGPIPE ignored and blocked, as some daemons and CI runners leave it.

The set is ``HOSTILE``; each of them is both ignored and blocked, then the
command is exec'd in place of this process.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys

HOSTILE = (32, 33, int(signal.SIGINT), int(signal.SIGPIPE))

# The kernel's own numbers: glibc's wrappers refuse the signals it reserves.
_SYSCALLS = {"x86_64": (13, 14), "aarch64": (134, 135)}  # rt_sigaction, rt_sigprocmask
_SIG_BLOCK = 0
_SIG_IGN = 1


class _KernelSigaction(ctypes.Structure):
    # struct sigaction as the kernel takes it, on x86_64 and arm64 alike.
    _fields_ = (
        ("handler", ctypes.c_ulong),
        ("flags", ctypes.c_ulong),
        ("restorer", ctypes.c_ulong),
        ("mask", ctypes.c_uint64),
    )


def make_hostile(signals: tuple[int, ...] = HOSTILE) -> None:
    """Ignore and block ``signals`` in this process (and so in what it execs)."""
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise RuntimeError(
            f"hostile_signals.py knows the system calls of x86_64 and arm64, not {machine}"
        )
    rt_sigaction, rt_sigprocmask = _SYSCALLS[machine]
    libc = ctypes.CDLL(None, use_errno=True)
    mask = 0
    for number in signals:
        action = _KernelSigaction(handler=_SIG_IGN)
        if libc.syscall(rt_sigaction, number, ctypes.byref(action), None, 8) != 0:
            raise OSError(ctypes.get_errno(), f"rt_sigaction({number}, SIG_IGN)")
        mask |= 1 << (number - 1)
    blocked = ctypes.c_uint64(mask)
    if libc.syscall(rt_sigprocmask, _SIG_BLOCK, ctypes.byref(blocked), None, 8) != 0:
        raise OSError(ctypes.get_errno(), "rt_sigprocmask(SIG_BLOCK)")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    make_hostile()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
