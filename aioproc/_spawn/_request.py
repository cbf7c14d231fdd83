"""Check the arguments of a spawn, then start the child with ``subprocess.Popen``.

Popen already knows the fastest safe way to start a program (``vfork`` on 3.11
and 3.12, ``posix_spawn`` where it can on 3.13) and every argument users know
from it. aioproc hands it only file descriptors: the pipes are made here, so
Popen wraps nothing in file objects (our ends become non-blocking streams).
Popen's own reaping is switched off: the child watcher owns the child.

The spawn runs in the calling thread. With ``vfork`` and ``posix_spawn`` the
thread is held only until the child has called ``exec``, well under a
millisecond, which is less than handing the work to a thread and back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "FileSpec",
    "SpawnRequest",
    "SpawnedChild",
    "StrOrBytesPath",
    "check_command",
    "check_file",
    "spawn",
]

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
FileSpec: TypeAlias = "int | IO[Any] | None"

_PIPE, _STDOUT, _DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
_NAMES = {_PIPE: "PIPE", _STDOUT: "STDOUT", _DEVNULL: "DEVNULL"}


def check_command(command: object) -> tuple[list[Any] | str | bytes, bool]:
    """Return the command in the form Popen takes, and whether it runs through the shell."""
    if isinstance(command, (str, bytes, os.PathLike)):
        line = os.fspath(command)
        if not line.strip():
            raise ValueError(f"command is empty: {command!r}")
        return line, True
    if not isinstance(command, Iterable):
        raise TypeError(
            "command must be a str (run through the shell) or a sequence of str, bytes "
            f"or os.PathLike (run directly), not {type(command).__name__}: {command!r}"
        )
    args = list(command)
    if not args:
        raise ValueError("command is empty: give at least the program to run")
    for index, arg in enumerate(args):
        if not isinstance(arg, (str, bytes, os.PathLike)):
            raise TypeError(
                f"command argument {index} must be str, bytes or os.PathLike, "
                f"not {type(arg).__name__}: {arg!r}"
            )
    return args, False


def check_file(
    name: str, value: object, accepted: str = "PIPE, DEVNULL, a file descriptor, a file object"
) -> None:
    """Refuse a stdio choice Popen would misread; ``accepted`` completes the TypeError."""
    if value is None or value in (_PIPE, _DEVNULL):
        return
    if value == _STDOUT and not isinstance(value, bool):
        if name != "stderr":
            raise ValueError(f"{name}=STDOUT is not valid: STDOUT can only be given for stderr")
        return
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"{name}={value!r} is not a valid file descriptor")
    if not isinstance(value, int) and not callable(getattr(value, "fileno", None)):
        raise TypeError(f"{name} must be {accepted} or None, not {type(value).__name__}: {value!r}")


def _check_env(env: object) -> None:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, (str, bytes)):
            raise TypeError(f"env keys must be str or bytes, not {type(key).__name__}: {key!r}")
        if not isinstance(value, (str, bytes)):
            raise TypeError(
                f"env[{key!r}] must be str or bytes, not {type(value).__name__}: {value!r}"
            )


class SpawnedChild:
    """What :func:`spawn` started: the pid and our ends of its pipes (or ``None``)."""

    __slots__ = ("pid", "stderr", "stdin", "stdout")

    def __init__(self, pid: int, stdin: int | None, stdout: int | None, stderr: int | None):
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr


class SpawnRequest:
    """A checked spawn: the command in Popen's form, the stdio choices, and Popen's options."""

    __slots__ = ("args", "leads_group", "popen_kwargs", "shell", "stderr", "stdin", "stdout")

    def __init__(
        self,
        command: object,
        *,
        stdin: FileSpec,
        stdout: FileSpec,
        stderr: FileSpec,
        cwd: StrOrBytesPath | None = None,
        env: Mapping[str, str] | None = None,
        startupinfo: Any = None,
        creationflags: int = 0,
        start_new_session: bool = False,
        pass_fds: Iterable[int] = (),
        user: str | int | None = None,
        group: str | int | None = None,
        extra_groups: Iterable[str | int] | None = None,
        umask: int = -1,
        process_group: int | None = None,
        die_with_parent: bool | int = False,
    ) -> None:
        self.args, self.shell = check_command(command)
        for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            check_file(name, value)
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        if process_group is not None and (
            isinstance(process_group, bool)
            or not isinstance(process_group, int)
            or process_group < 0
        ):
            raise ValueError(
                f"process_group must be a non-negative int or None, not {process_group!r}"
            )
        if env is not None:
            _check_env(env)
        self.leads_group = bool(start_new_session) or process_group == 0
        kwargs: dict[str, Any] = {
            "cwd": cwd,
            "env": env,
            "startupinfo": startupinfo,
            "creationflags": creationflags,
            "start_new_session": start_new_session,
            "pass_fds": tuple(pass_fds),
            "close_fds": True,
        }
        # Only what was asked for: older Pythons and uvloop lack some of these.
        if user is not None:
            kwargs["user"] = user
        if group is not None:
            kwargs["group"] = group
        if extra_groups is not None:
            kwargs["extra_groups"] = extra_groups
        if umask >= 0:
            kwargs["umask"] = umask
        in_child: list[Callable[[], None]] = []
        if process_group is not None:
            kwargs["process_group"] = process_group
        death_signal = _death_signal(die_with_parent)
        if death_signal:
            in_child.append(_die_with_parent(death_signal))
        if in_child:
            kwargs["preexec_fn"] = in_child[0] if len(in_child) == 1 else _run_all(in_child)
        self.popen_kwargs = kwargs


def spawn(request: SpawnRequest) -> SpawnedChild:
    """Start the child; PIPE streams come back as fds we own."""
    ours: list[int] = []  # every fd we opened, closed on failure
    theirs: list[int] = []  # the child's ends, closed in any case once it started
    try:
        child_stdin, our_stdin = request.stdin, None
        if child_stdin == _PIPE:
            child_stdin, our_stdin = _pipe(ours, theirs, ours_reads=False)
        child_stdout, our_stdout = request.stdout, None
        if child_stdout == _PIPE:
            child_stdout, our_stdout = _pipe(ours, theirs, ours_reads=True)
        child_stderr, our_stderr = request.stderr, None
        if child_stderr == _PIPE:
            child_stderr, our_stderr = _pipe(ours, theirs, ours_reads=True)
        popen = subprocess.Popen(
            request.args,
            stdin=child_stdin,
            stdout=child_stdout,
            stderr=child_stderr,
            shell=request.shell,
            **request.popen_kwargs,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    # The watcher reaps this child. With returncode unset, Popen.__del__ would put
    # it on subprocess._active, and the next Popen anywhere would reap it for us.
    popen.returncode = 0
    return SpawnedChild(popen.pid, our_stdin, our_stdout, our_stderr)


def _pipe(ours: list[int], theirs: list[int], *, ours_reads: bool) -> tuple[int, int]:
    """Make a pipe; return (the child's end, our end). Our stream makes its end non-blocking."""
    read_fd, write_fd = os.pipe()
    mine, child = (read_fd, write_fd) if ours_reads else (write_fd, read_fd)
    ours.append(mine)
    theirs.append(child)
    return child, mine


def _run_all(steps: list[Callable[[], None]]) -> Callable[[], None]:
    def run() -> None:
        for step in steps:
            step()

    return run


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_prctl: Any = None


def _death_signal(die_with_parent: object) -> int:
    """The signal ``die_with_parent`` asks for: 0 for none, SIGKILL for ``True``."""
    if die_with_parent is False or die_with_parent is None:
        return 0
    if die_with_parent is True:
        sig: int = signal.SIGKILL
    elif isinstance(die_with_parent, int) and die_with_parent in signal.valid_signals():
        sig = die_with_parent
    else:
        raise ValueError(
            f"die_with_parent must be True, False or a signal number, not {die_with_parent!r}"
        )
    if sys.platform != "linux":
        raise NotImplementedError(
            f"die_with_parent needs Linux (prctl PR_SET_PDEATHSIG); this is {sys.platform}"
        )
    return sig


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when we die.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits,
    not only the process: a child spawned from an event loop running in a
    short-lived thread gets the signal when that thread ends.

    The flag is set in the child, after the fork; if we died in between, the
    child was already reparented and the kernel will never send the signal. So
    it compares ``getppid()`` with our pid, read here, before the fork, and
    leaves at once if they differ.

    The cost: a ``preexec_fn`` makes Popen fork instead of using ``vfork`` or
    ``posix_spawn``, and wait while the child, a copy of this process, runs
    Python code and then drops that copy at ``exec``. The spawn takes about 2 ms
    instead of 0.3 with a small heap, and it grows with our memory (10 ms instead
    of 0.35 at 200 MB on a 2-core machine). The code run in the child takes no lock.
    """
    import ctypes

    global _prctl
    if _prctl is None:
        # Looked up before the fork: dlopen() in a forked child of a threaded
        # process can deadlock.
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl = _prctl
    parent = os.getpid()

    def set_death_signal() -> None:
        if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
            os._exit(1)  # sig is caught or ignored here; leave anyway

    return set_death_signal
