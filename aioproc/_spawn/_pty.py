"""Pseudo-terminals: ``open_process(cmd, pty=True)`` runs the child on a terminal of its own.

The child gets the slave side as stdin, stdout and (unless ``stderr`` says
otherwise) stderr, in a new session whose controlling terminal it is: pid =
pgid = sid and ``tcgetpgrp()`` is the child, so ^C, SIGHUP, SIGWINCH and
``/dev/tty`` prompts work. We keep only the master side, as the process's
``stdin`` (a ``dup`` of it) and ``stdout``.

Spawning, on Linux: ``os.posix_spawn`` with ``setsid`` and an ``open()`` of the
slave's path as the child's fd 0. glibc runs ``setsid`` before the file
actions, and Linux makes a tty opened by a session leader without one its
controlling terminal, so there is no ``preexec_fn`` and no fork of this process.
``cwd`` goes through glibc's ``posix_spawn`` by ctypes (``os.posix_spawn``
has no ``chdir`` action). Options that ``posix_spawn`` cannot carry (``user``,
``group``, ``extra_groups``, ``umask``, ``pass_fds``, ``die_with_parent``), and
other systems, go through ``Popen`` with ``start_new_session=True`` and a
``preexec_fn`` doing ``TIOCSCTTY``, which makes Popen fork instead of vfork.

The end of the output: once every slave fd is closed, Linux answers reads of
the master with EIO (after the buffered bytes), which the stream reads as
``EndOfStream``. The parent's copy of the slave is closed right after the spawn,
or that end would never come.

Non-blocking mode: our streams set ``O_NONBLOCK`` on the master's open file
description. The child's fds are the slave, another description, so the child
never sees it (trio#3315 is about a description both sides share).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import subprocess
import sys
import termios
from typing import TYPE_CHECKING, Any

import anyio
from anyio import BrokenResourceError, BusyResourceError, ClosedResourceError, EndOfStream

from ._native import NativeProcess
from ._process import Process
from ._request import SpawnedChild, SpawnRequest
from ._streams import FdReceiveStream, FdSendStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._backends import Backend

__all__ = [
    "STDERR_DEFAULT",
    "Pty",
    "PtyProcess",
    "PtyReceiveStream",
    "PtySendStream",
    "Terminal",
    "check_pty",
    "open_pty_process",
]

DEFAULT_TERM = "xterm-256color"


class _PipeUnlessPty(int):
    """The default of ``stderr``: a pipe, as ever, but with ``pty=`` the terminal.

    It equals ``subprocess.PIPE``, so everything that is not a pty reads it as
    PIPE; only the pty code tells it from a ``PIPE`` given on purpose.
    """

    def __repr__(self) -> str:
        return "PIPE"


STDERR_DEFAULT: int = _PipeUnlessPty(subprocess.PIPE)


@dataclasses.dataclass(frozen=True, slots=True)
class Pty:
    """How to set up the terminal of ``open_process(..., pty=Pty(...))``.

    * ``rows``, ``cols``: the window size the child sees (``TIOCGWINSZ``);
    * ``echo``: whether the terminal echoes what is written to it (input
      appears again in the output, as on a screen);
    * ``raw``: raw mode (``cfmakeraw``): no echo, no line editing, no ``\\n`` to
      ``\\r\\n``, no signal characters; bytes pass unchanged both ways;
    * ``term``: the child's ``TERM``, unless ``env`` given to ``open_process``
      sets one; ``None`` leaves ``TERM`` as the environment has it.
    """

    rows: int = 24
    cols: int = 80
    echo: bool = True
    raw: bool = False
    term: str | None = DEFAULT_TERM

    def __post_init__(self) -> None:
        _check_size(self.rows, self.cols)
        for name in ("echo", "raw"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"Pty {name} must be True or False, not {value!r}")
        term = self.term
        if term is not None and (not isinstance(term, str) or not term or "\0" in term):
            raise ValueError(f"Pty term must be a non-empty str or None, not {term!r}")


def _check_size(rows: object, cols: object) -> tuple[int, int]:
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}: {value!r}")
        if not 1 <= value <= 0xFFFF:
            raise ValueError(f"{name} must be between 1 and 65535, not {value!r}")
    return rows, cols  # type: ignore[return-value]


def check_pty(pty: object) -> Pty | None:
    """``pty=`` as given to ``open_process``: ``False``/``None``, ``True`` or a :class:`Pty`."""
    if pty is None or pty is False:
        return None
    if pty is True:
        return Pty()
    if isinstance(pty, Pty):
        return pty
    raise TypeError(f"pty must be True, False or an aioproc.Pty, not {type(pty).__name__}: {pty!r}")


# -- the master side as streams -------------------------------------------------------


class PtyReceiveStream(FdReceiveStream):
    """The child's output from the master: EIO, the end of a pty, is ``EndOfStream``."""

    def __init__(self, fd: int, backend: Backend) -> None:
        super().__init__(fd, backend)
        self._unread_until_large = 0  # a pty is not a pipe: never enlarged

    async def _receive(self, max_bytes: int) -> bytes:
        try:
            return await super()._receive(max_bytes)
        except BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EIO:
                raise EndOfStream from None
            raise


class PtySendStream(FdSendStream):
    """Typing into the terminal. Closing it types the EOF character (see :meth:`close`)."""

    def __init__(self, fd: int, backend: Backend) -> None:
        super().__init__(fd, backend)
        self._line_open = False  # the last byte sent did not end a line

    async def _send(self, item: bytes | memoryview, whole: bool) -> None:
        await super()._send(item, whole)
        if len(item):
            self._line_open = memoryview(item).cast("B")[-1] not in b"\n\r"

    def _eof_bytes(self) -> bytes:
        """VEOF, twice if a line is open: the first only hands that line to the reader."""
        veof = _control_char(self._fd, termios.VEOF, b"\x04")
        return veof * 2 if self._line_open else veof

    async def send_eof(self) -> None:
        await self.send(self._eof_bytes())
        self._line_open = False

    def close(self) -> None:
        """Type the EOF character, if the terminal takes it now, and let go of this fd.

        So ``aclose()`` means what it means for a pipe: the child reads EOF (in
        cooked mode; in raw mode it reads the byte). The master itself stays
        open, as the process's ``stdout``, until the child is reaped.
        """
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if self._blocking:
                    self._make_nonblocking()
                os.write(self._fd, self._eof_bytes())
        super().close()


def _control_char(fd: int, index: int, default: bytes) -> bytes:
    """The terminal's character at ``cc[index]`` now (the child may have changed it)."""
    try:
        char = termios.tcgetattr(fd)[6][index]
    except (termios.error, OSError):
        return default
    if isinstance(char, int):  # in raw mode VMIN/VTIME slots hold ints; not these
        return bytes([char])
    return char if char and char != b"\0" else default


# -- the handle on process.pty ------------------------------------------------------


class Terminal:
    """The terminal of a process started with ``pty=``: ``process.pty``."""

    __slots__ = ("_name", "_process")

    def __init__(self, process: PtyProcess, name: str) -> None:
        self._process = process
        self._name = name

    def __repr__(self) -> str:
        return f"<aioproc.Terminal {self._name} of pid {self._process.pid}>"

    @property
    def name(self) -> str:
        """The slave's path, as the child's ``ttyname()`` gives it (``/dev/pts/N``)."""
        return self._name

    def _fd(self) -> int:
        fd = self._process._master.fileno_or_closed()
        if fd < 0:
            raise ClosedResourceError("the terminal was closed")
        return fd

    @property
    def size(self) -> tuple[int, int]:
        """``(rows, cols)`` as the child sees them."""
        rows, cols = termios.tcgetwinsize(self._fd())
        return rows, cols

    @property
    def echo(self) -> bool:
        """Whether the terminal echoes input now: ``False`` while a password is read.

        Programs that read a password (getpass, ssh, sudo) turn echo off first,
        so this tells a password prompt from another (pexpect's ``waitnoecho``).
        """
        return bool(termios.tcgetattr(self._fd())[3] & termios.ECHO)

    def resize(self, rows: int, cols: int) -> None:
        """Set the window size (``TIOCSWINSZ``); the child's foreground group gets SIGWINCH."""
        _check_size(rows, cols)
        termios.tcsetwinsize(self._fd(), (rows, cols))

    def interrupt(self) -> None:
        """Type the interrupt character (VINTR, ^C): the child's foreground group gets SIGINT.

        If the terminal does not turn characters into signals (raw mode, or the
        child switched ``ISIG`` off), or its input is full, SIGINT is sent to the
        foreground process group directly instead.
        """
        fd = self._fd()
        try:
            attrs = termios.tcgetattr(fd)
            if attrs[3] & termios.ISIG:
                vintr = _control_char(fd, termios.VINTR, b"\x03")
                stream = self._process._master
                if stream._blocking:
                    stream._make_nonblocking()
                if os.write(fd, vintr) == 1:
                    return
        except (termios.error, OSError):  # full (EAGAIN), or the child has let go of it
            pass
        self._signal_foreground(signal.SIGINT)

    def _signal_foreground(self, sig: int) -> None:
        if self._process.returncode is not None:
            return
        try:
            group = os.tcgetpgrp(self._fd())
        except OSError:
            group = -1
        if group > 0 and group != self._process.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        else:
            self._process.send_signal(sig, group=True)

    async def send_eof(self) -> None:
        """Type the EOF character (VEOF, ^D); in cooked mode the child's read returns 0.

        VEOF ends input only at the start of a line: if what was sent last did
        not end a line, it is typed twice, the first handing over that line.
        """
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            raise ClosedResourceError("the terminal's input was closed")
        await stdin.send_eof()


# -- the process ----------------------------------------------------------------------


class _Master(PtyReceiveStream):
    """The process's ``stdout``: closing it closes the terminal, which hangs up the child."""

    _typing: PtySendStream | None = None  # stdin, a dup of this fd

    def fileno_or_closed(self) -> int:
        return self._fd

    def close(self) -> None:
        super().close()
        if self._typing is not None:
            self._typing.close()  # our last fd of the master: the kernel hangs up


class PtyProcess(NativeProcess):
    """A :class:`NativeProcess` whose stdin and stdout are a terminal's master side.

    Stopping (an error or cancellation leaving ``async with``, or ``stop()``):
    the EOF character, ``grace`` seconds, a hang-up (SIGHUP and SIGCONT to the
    child's group and the terminal's foreground group, as the kernel sends when
    a terminal goes away), ``grace``
    seconds, SIGKILL. The output is read and dropped meanwhile, so a child
    blocked writing to a full terminal can go on and exit. The child is reaped
    before the master is closed.
    """

    pty: Terminal

    def __init__(
        self,
        args: Any,
        pid: int,
        master: int,
        stderr: int | None,
        name: str,
        backend: Backend,
        *,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        streams: list[FdReceiveStream | FdSendStream] = []
        try:
            self._master = _Master(master, backend)
            streams.append(self._master)
            stdin = PtySendStream(os.dup(master), backend)
            streams.append(stdin)
        except BaseException:
            for stream in streams:
                stream.close()
            if not streams:
                os.close(master)
            if stderr is not None:
                os.close(stderr)
            raise
        try:
            super().__init__(
                args,
                SpawnedChild(pid, None, None, stderr),
                backend,
                leads_group=True,
                grace=grace,
                deliver_cancel=deliver_cancel,
            )
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        self._stdin = self._typing = self._master._typing = stdin
        self._stdout = self._master
        self.pty = Terminal(self, name)

    @property
    def stdin(self) -> PtySendStream:
        return self._typing

    @property
    def stdout(self) -> PtyReceiveStream:
        return self._master

    async def _communicate(
        self, input: bytes | bytearray | memoryview | None, *, feed_stdin: bool
    ) -> tuple[bytes | None, bytes | None]:
        # One task per stream: the single-selector path reads pipes only.
        return await Process._communicate(self, input, feed_stdin=feed_stdin)

    async def aclose(self) -> None:
        """Type EOF, wait for the child (its output is read and dropped), then close the master.

        Reaping first means the child's own exit status comes back, not the
        SIGHUP a closed master would send it. If this is cancelled while
        waiting, the child is stopped as by :meth:`stop`.
        """
        self._typing.close()
        if self.returncode is None:
            try:
                await self._wait_dropping_output()
            except BaseException:
                await self.stop()
                raise
        self._close_streams()
        self._release()

    async def _terminate_then_kill(self, grace: float) -> None:
        # stop() has closed stdin already, which typed EOF.
        with anyio.move_on_after(grace):
            await self._wait_dropping_output()
        if self.returncode is None:
            self._hang_up()
            with anyio.move_on_after(grace):
                await self._wait_dropping_output()
        if self.returncode is None:
            self._signal(signal.SIGKILL, True)
            await self._wait_for_exit()

    def _hang_up(self) -> None:
        """SIGHUP then SIGCONT to the child's group and the terminal's foreground group,
        as the kernel sends them when a terminal goes away (the master stays open)."""
        try:
            foreground = os.tcgetpgrp(self._master._fd)
        except OSError:
            foreground = -1
        for sig in (signal.SIGHUP, signal.SIGCONT):
            self._signal(sig, True)
            if foreground > 0 and foreground != self.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(foreground, sig)

    async def _wait_dropping_output(self) -> None:
        """Wait for the exit while reading (and dropping) the output, when nobody else reads it."""

        async def drop_output() -> None:
            with contextlib.suppress(EndOfStream, ClosedResourceError, BusyResourceError):
                while True:
                    await self._master._receive(1 << 16)

        if self._master.closed or self._master._busy:
            await self._wait_for_exit()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(drop_output)
            await self._wait_for_exit()
            tg.cancel_scope.cancel()


# -- spawning -------------------------------------------------------------------------

# What posix_spawn cannot do; any of these sends the spawn through Popen.
_POPEN_ONLY = ("user", "group", "extra_groups", "umask", "pass_fds", "preexec_fn")
# Reset to their default in the child: Popen's restore_signals (SIGPIPE, SIGXFSZ),
# and the terminal's own, which a parent started in the background may ignore.
_SIGNAL_NAMES = "SIGPIPE SIGXFSZ SIGINT SIGQUIT SIGHUP SIGTSTP SIGTTIN SIGTTOU"
_DEFAULT_SIGNALS = tuple(getattr(signal, n) for n in _SIGNAL_NAMES.split() if hasattr(signal, n))
_FAST_PATH = sys.platform == "linux" and hasattr(os, "POSIX_SPAWN_OPEN")


_NAMES = {subprocess.PIPE: "PIPE", subprocess.STDOUT: "STDOUT", subprocess.DEVNULL: "DEVNULL"}


def _named(value: object) -> str:
    return _NAMES.get(value, repr(value)) if isinstance(value, int) else repr(value)


def check_stdio(stdin: object, stdout: object, stderr: object) -> None:
    if stdin not in (subprocess.PIPE, None):
        raise ValueError(
            f"with pty=, stdin is the terminal: leave it out (or PIPE), not stdin={_named(stdin)}"
        )
    if stdout != subprocess.PIPE:
        raise ValueError(
            "with pty=, stdout is the terminal: leave it out (or PIPE), "
            f"not stdout={_named(stdout)}"
        )
    if stderr == subprocess.STDOUT:
        raise ValueError(
            "with pty=, stderr goes to the terminal unless told otherwise: leave it out, "
            "not stderr=STDOUT"
        )


async def open_pty_process(
    command: object,
    options: dict[str, Any],
    pty: Pty,
    backend: Backend,
    *,
    grace: float,
    deliver_cancel: Callable[[Process], Awaitable[object]] | None,
) -> PtyProcess:
    """Check the options, start ``command`` on a new terminal, return its :class:`PtyProcess`."""
    options = dict(options)
    stdin, stdout, stderr = options["stdin"], options["stdout"], options["stderr"]
    check_stdio(stdin, stdout, stderr)
    if options.get("process_group") is not None:
        raise ValueError(
            "with pty=, the child leads a new session and process group: "
            f"process_group={options['process_group']!r} cannot be given"
        )
    to_terminal = stderr is STDERR_DEFAULT
    options.update(
        stdin=subprocess.DEVNULL,  # placeholders for the checks; the slave replaces them
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if to_terminal else stderr,
        start_new_session=True,
    )
    env = options.get("env")
    if pty.term is not None and not (env is not None and "TERM" in env):
        options["env"] = {**(os.environ if env is None else env), "TERM": pty.term}
    request = SpawnRequest(command, **options)
    await backend.checkpoint_if_cancelled()
    pid, master, stderr_fd, name = _spawn(request, pty, to_terminal)
    return PtyProcess(
        command,
        pid,
        master,
        stderr_fd,
        name,
        backend,
        grace=grace,
        deliver_cancel=deliver_cancel,
    )


def _spawn(request: SpawnRequest, pty: Pty, to_terminal: bool) -> tuple[int, int, int | None, str]:
    """Make the terminal, start the child on it; return (pid, master, stderr read end, name)."""
    master, slave = os.openpty()
    ours = [master]
    theirs = [slave]
    try:
        _set_up(slave, pty)
        name = os.ttyname(slave)
        stderr: Any = None if to_terminal else request.stderr  # None: the terminal
        stderr_ours = None
        if stderr == subprocess.PIPE:
            stderr_ours, stderr = os.pipe()
            ours.append(stderr_ours)
            theirs.append(stderr)
        kwargs = request.popen_kwargs
        if (
            _FAST_PATH
            and not any(kwargs.get(key) for key in _POPEN_ONLY)
            and (kwargs.get("cwd") is None or _LibcSpawn.get() is not None)
        ):
            pid = _posix_spawn(request, name, to_terminal, stderr)
        else:
            pid = _popen(request, slave, slave if to_terminal else stderr)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return pid, master, stderr_ours, name


def _set_up(slave: int, pty: Pty) -> None:
    termios.tcsetwinsize(slave, (pty.rows, pty.cols))
    if pty.echo and not pty.raw:
        return
    attrs = termios.tcgetattr(slave)
    if pty.raw:  # cfmakeraw(3); tty.cfmakeraw needs 3.12
        attrs[0] &= ~(
            termios.IGNBRK
            | termios.BRKINT
            | termios.PARMRK
            | termios.ISTRIP
            | termios.INLCR
            | termios.IGNCR
            | termios.ICRNL
            | termios.IXON
        )
        attrs[1] &= ~termios.OPOST
        attrs[2] &= ~(termios.CSIZE | termios.PARENB)
        attrs[2] |= termios.CS8
        attrs[3] &= ~(
            termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN
        )
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
    else:
        attrs[3] &= ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)


def _resolve(program: str, env: Any) -> str:
    """The program's path, found as Popen finds it (on the ``PATH`` of ``env``)."""
    if os.sep in program:
        return program
    for folder in os.get_exec_path(env):
        path = os.path.join(folder, program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _posix_spawn(request: SpawnRequest, name: str, to_terminal: bool, stderr: Any) -> int:
    args: list[Any]
    if isinstance(request.args, (str, bytes)):
        args = ["/bin/sh", "-c", request.args]
    else:
        args = [os.fspath(arg) for arg in request.args]
    env = request.popen_kwargs["env"]
    if env is None:
        env = os.environ
    program = _resolve(os.fsdecode(args[0]), env)
    actions: list[tuple[Any, ...]] = []
    if stderr == subprocess.DEVNULL:
        actions.append((os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_RDWR, 0))
    elif stderr is not None:  # before fd 0 and 1 are replaced: it may be one of them
        fd = stderr if isinstance(stderr, int) else stderr.fileno()
        actions.append((os.POSIX_SPAWN_DUP2, fd, 2))
    # glibc runs setsid() before the file actions: this open makes it the controlling tty.
    actions.append((os.POSIX_SPAWN_OPEN, 0, name, os.O_RDWR, 0))
    actions.append((os.POSIX_SPAWN_DUP2, 0, 1))
    if to_terminal:
        actions.append((os.POSIX_SPAWN_DUP2, 0, 2))
    cwd = request.popen_kwargs.get("cwd")
    try:
        if cwd is not None:
            libc = _LibcSpawn.get()
            assert libc is not None
            return libc.spawn(program, args, env, actions, os.fsdecode(cwd))
        return os.posix_spawn(
            program, args, env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS
        )
    except OSError as exc:
        if exc.filename is None:
            missing = cwd is not None and not os.path.isdir(cwd)
            exc.filename = cwd if missing else args[0]
        raise


class _LibcSpawn:
    """glibc's ``posix_spawn`` through ctypes, for a spawn with ``cwd``.

    ``os.posix_spawn`` has no ``chdir`` action; glibc has had
    ``posix_spawn_file_actions_addchdir_np`` since 2.29. Without it (another
    libc, an older glibc), ``cwd`` goes through Popen and a fork.
    """

    _SETSIGDEF = 0x04  # POSIX_SPAWN_SETSIGDEF, glibc
    _SETSID = 0x80  # POSIX_SPAWN_SETSID, glibc
    _instance: _LibcSpawn | None = None
    _tried = False

    @classmethod
    def get(cls) -> _LibcSpawn | None:
        if not cls._tried:
            cls._tried = True
            try:
                if os.confstr("CS_GNU_LIBC_VERSION"):
                    cls._instance = cls()
            except (AttributeError, OSError, ValueError):
                cls._instance = None
        return cls._instance

    def __init__(self) -> None:
        import ctypes

        self._ctypes = ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self._spawn = libc.posix_spawn
        self._fa_init = libc.posix_spawn_file_actions_init
        self._fa_destroy = libc.posix_spawn_file_actions_destroy
        self._fa_open = libc.posix_spawn_file_actions_addopen
        self._fa_dup2 = libc.posix_spawn_file_actions_adddup2
        self._fa_chdir = libc.posix_spawn_file_actions_addchdir_np
        self._attr_init = libc.posix_spawnattr_init
        self._attr_destroy = libc.posix_spawnattr_destroy
        self._attr_flags = libc.posix_spawnattr_setflags
        self._attr_sigdefault = libc.posix_spawnattr_setsigdefault
        self._sigemptyset = libc.sigemptyset
        self._sigaddset = libc.sigaddset
        self._fa_open.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint
        ]  # fmt: skip
        self._fa_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._fa_chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._attr_flags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        self._spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p),
        ]  # fmt: skip

    def spawn(
        self, program: str, args: list[Any], env: Any, actions: list[tuple[Any, ...]], cwd: str
    ) -> int:
        ctypes = self._ctypes
        # Larger than glibc's structures (80 and 336 bytes on x86-64), whatever the ABI.
        file_actions = ctypes.create_string_buffer(1024)
        attr = ctypes.create_string_buffer(1024)
        sigset = ctypes.create_string_buffer(1024)
        self._check(self._fa_init(file_actions))
        try:
            self._check(self._attr_init(attr))
            try:
                self._check(self._fa_chdir(file_actions, os.fsencode(cwd)))
                for action in actions:
                    if action[0] == os.POSIX_SPAWN_OPEN:
                        _, fd, path, flags, mode = action
                        self._check(self._fa_open(file_actions, fd, os.fsencode(path), flags, mode))
                    else:
                        _, fd, new_fd = action
                        self._check(self._fa_dup2(file_actions, fd, new_fd))
                self._sigemptyset(sigset)
                for sig in _DEFAULT_SIGNALS:
                    self._sigaddset(sigset, int(sig))
                self._check(self._attr_sigdefault(attr, sigset))
                self._check(self._attr_flags(attr, self._SETSID | self._SETSIGDEF))
                argv = (ctypes.c_char_p * (len(args) + 1))(*map(os.fsencode, args), None)
                pairs = [os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()]
                envp = (ctypes.c_char_p * (len(pairs) + 1))(*pairs, None)
                pid = ctypes.c_int()
                self._check(
                    self._spawn(
                        ctypes.byref(pid), os.fsencode(program), file_actions, attr, argv, envp
                    )
                )
                return int(pid.value)
            finally:
                self._attr_destroy(attr)
        finally:
            self._fa_destroy(file_actions)

    @staticmethod
    def _check(error: int) -> None:
        if error:
            raise OSError(error, os.strerror(error))


def _popen(request: SpawnRequest, slave: int, stderr: Any) -> int:
    kwargs = dict(request.popen_kwargs)
    then = kwargs.pop("preexec_fn", None)

    def in_child() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # after Popen's setsid()
        for sig in _DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if then is not None:
            then()

    popen = subprocess.Popen(
        request.args,
        stdin=slave,
        stdout=slave,
        stderr=stderr,
        shell=request.shell,
        preexec_fn=in_child,
        **kwargs,
    )
    popen.returncode = 0  # the child watcher reaps it (see _request.spawn)
    return popen.pid
