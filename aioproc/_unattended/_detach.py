"""``detach``: start a command that is not our child, will outlive us, and leaves nothing here.

It is the double fork of python-daemon's ``detach_process_context``, done so
that the caller's event loop is held for no longer than one fork, and so that a
command that cannot start raises the exception ``open_process`` would raise:

1. We fork an *intermediate* through ``subprocess.Popen`` with
   ``start_new_session=True`` and a ``preexec_fn`` that never returns. Popen,
   rather than ``os.fork()``, because it does the interpreter's bookkeeping
   around the fork and the ``setsid()`` in C, and does not warn that the
   process has threads: that warning is about arbitrary code running in the
   child, and the intermediate runs only the few lines of :func:`_intermediate`,
   which take no lock another thread could hold (Popen already disabled the
   garbage collector, so no finalizer runs either).
2. The intermediate first closes every fd but its stdio, the report pipe and
   ``pass_fds``. Among them is the write end of Popen's exec-error pipe, so the
   caller's Popen returns now, long before the intermediate is done: the loop
   is held for the fork and the interpreter's after-fork hooks in the child
   (about 1.5 ms with a small heap, 5.5 ms at 200 MB, where the fork alone takes 4).
3. The intermediate restores every signal to its default disposition and
   unblocks them all (Python ignores SIGPIPE, and ignored signals survive
   ``exec``), then starts the command with ``subprocess.Popen`` again, with
   ``start_new_session=True``, so the command leads a new session of its own and
   has no controlling terminal. That Popen uses ``vfork`` and reports a failed
   ``exec`` or a bad ``cwd`` with the usual exceptions; the intermediate pickles
   the pid or the exception into the report pipe and exits. The command is
   reparented to init, or to the nearest subreaper.
4. The caller awaits the intermediate's exit through the child watcher, reaps
   it, reads the report, and returns the pid or raises the exception.

Paths given for stdio are opened in a worker thread before the fork: opening a
FIFO waits for its other end, and the loop must not wait with it.

Once the intermediate exists, the rest (reaping it, reading the report, writing
the pid file) must finish: the command may already be running, and a caller
that was cancelled then would never learn its pid. anyio's and trio's
cancellations are held off by a shielded scope, and arrive once ``detach`` has
returned. A plain asyncio cancellation (``Task.cancel()``, ``asyncio.wait_for``)
gets through any shield, so on asyncio that part runs in a task of its own
(``_backends.run_to_completion``), which the caller waits for; it then raises the cancellation.
The command is then tracked by its pid file, or killed if it has none: no
command runs on that nobody can know the pid of. That wait lasts as long as
the intermediate's work: a ``vfork`` and an ``exec``, then its exit.

The price of the double fork is the fork of this whole process: ``detach``
returns the pid after 3 to 4 ms with a small heap and 10 to 12 ms at 200 MB,
where ``open_process`` (``vfork``) takes 0.3 and 0.35 ms, and a bare double fork
that reports nothing (python-daemon's) 2 ms: the range of a spawn that forks, not
of a ``vfork``. The loop runs other tasks meanwhile. (A 2-core machine, CPython 3.13.)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeAlias

from anyio import to_thread

from .. import _watcher
from .._backends import current_backend, run_to_completion
from .._spawn import SpawnRequest, StrOrBytesPath, check_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._backends import Backend

__all__ = ["DetachedProcess", "detach"]

DetachFile: TypeAlias = "int | IO[Any] | StrOrBytesPath | None"

# The report must fit in the pipe with room to spare, so that the intermediate's
# one write never blocks: the caller reads only after the intermediate exited.
_REPORT_LIMIT = 4096
_CATCHABLE = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


class DetachedProcess:
    """What :func:`detach` started: the command's own pid, which is not our child.

    Its exit status cannot be learned (only its parent, init or a subreaper,
    can reap it), and its pid may be reused once it has exited; check that it
    is still yours before signalling it, for example through the pid file.
    """

    __slots__ = ("args", "pid", "pid_file")

    def __init__(self, pid: int, args: Any, pid_file: StrOrBytesPath | None) -> None:
        self.pid = pid
        """The pid of the running command (not of an intermediate process)."""
        self.args = args
        """The command as it was given to :func:`detach`."""
        self.pid_file = pid_file
        """The pid file written for it, or ``None``."""

    def __repr__(self) -> str:
        return f"<DetachedProcess pid={self.pid} args={self.args!r}>"


async def detach(
    command: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    stdin: DetachFile = subprocess.DEVNULL,
    stdout: DetachFile = subprocess.DEVNULL,
    stderr: DetachFile = subprocess.DEVNULL,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
    pass_fds: Sequence[int] = (),
    pid_file: StrOrBytesPath | None = None,
) -> DetachedProcess:
    """Start ``command`` detached from this process, and return once it runs.

    ``nohup setsid command >/dev/null 2>&1 &`` as one awaitable call that returns
    the command's pid. The command runs in a new session (its sid is its pid,
    and it has no controlling terminal), its parent is init or the nearest
    subreaper, never us, and it keeps running when we exit, are killed, or get
    the SIGHUP of a closed terminal. Only stdio and ``pass_fds`` stay open in it,
    and every signal has its default disposition and is unblocked. Nothing is
    left in this process: the intermediate process is reaped before this returns.

    ``command`` is a ``str`` (or bytes, or path) to run through ``/bin/sh``, or a
    sequence of arguments to run directly. ``stdin``, ``stdout`` and ``stderr``
    default to ``DEVNULL``; each also takes an fd, a file object, ``None`` to
    share ours, or a path: stdout and stderr are opened for appending (and
    created, mode 0o666 less our umask), stdin for reading. A relative path is
    relative to our working directory, not to ``cwd``. ``stderr=STDOUT`` sends
    stderr where stdout goes. ``cwd``, ``env``, ``umask`` and ``pass_fds`` mean what
    they mean to ``subprocess.Popen``, and apply to the command only.

    ``pid_file``, if given, is written with the pid and a newline once the
    command runs. It is written to a temporary file in the same directory and
    renamed into place, so a reader sees either the old content or the whole
    new pid. If it cannot be written, the command is killed and the error raised.

    A command that cannot start raises here what :func:`open_process` raises:
    ``FileNotFoundError`` naming the program or the ``cwd``, ``PermissionError``
    for a file that is not executable. A stdio path or pid file that cannot be
    opened raises the ``OSError`` naming that path, as given.

    Paths are opened without blocking the event loop: a FIFO waits for its other
    end, and a deadline or a cancellation meanwhile abandons the open, leaving
    no fd and starting nothing.

    Cancelled once the command may run: by anyio or trio, ``detach`` still
    returns the pid, and the cancellation arrives at the next checkpoint. By a
    plain asyncio ``Task.cancel()`` (``asyncio.wait_for``, ``asyncio.timeout``),
    which no shield holds off, ``CancelledError`` is raised once the pid is
    known: with ``pid_file`` the command runs on, and its pid file is written;
    without, it is killed, since nobody could learn its pid.

    Glibc's reserved signals 32 and 33 cannot be reset from Python: if this
    process ignores them (inherited through ``exec``), so does the command.
    """
    for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if isinstance(value, int) and value == subprocess.PIPE:
            raise ValueError(
                f"{name}=PIPE is not valid for a detached process: nothing would be left to "
                "use the other end; give DEVNULL, a path, a file descriptor or a file object"
            )
        if not _is_path(value):
            check_file(name, value, "DEVNULL, a path, a file descriptor, a file object")
    request = SpawnRequest(
        command,
        stdin=None,
        stdout=None,
        stderr=None,
        cwd=cwd,
        env=env,
        umask=umask,
        pass_fds=pass_fds,
        start_new_session=True,
    )
    backend = current_backend()
    await backend.checkpoint_if_cancelled()
    pending_pid_file = None if pid_file is None else _PidFile(pid_file)
    try:
        stdio, opened = await _open_paths(stdin, stdout, stderr)
        try:
            intermediate, report_fd = _fork_intermediate(request, stdio)
        finally:
            for fd in opened:
                os.close(fd)

        # From here on the command may run: the rest must finish whatever cancels us,
        # or a command would run that nobody knows the pid of.
        async def untracked(pid: int) -> None:
            # Cancelled by plain asyncio (Task.cancel(), wait_for): we cannot return
            # the pid, and no pid file tracks the command, so it must not run on.
            # Its pid cannot have been reused: it was running a moment ago.
            if pending_pid_file is None:
                os.kill(pid, signal.SIGKILL)

        pid = await run_to_completion(
            lambda: _finish(request, backend, intermediate, report_fd, pending_pid_file),
            undo=untracked,
        )
    finally:
        if pending_pid_file is not None:
            pending_pid_file.discard()
    return DetachedProcess(pid, command, pid_file)


async def _finish(
    request: SpawnRequest,
    backend: Backend,
    intermediate: int,
    report_fd: int,
    pid_file: _PidFile | None,
) -> int:
    """Reap the intermediate, learn the pid, write the pid file: the part that must end.

    Even if the wait is interrupted (the loop shutting down cancels every task,
    a KeyboardInterrupt), it ends: the intermediate is then reaped blocking,
    which lasts no longer than the rest of its work (a ``vfork`` and an ``exec``),
    and the command is either tracked by its pid file or killed.
    """
    interrupted: BaseException | None = None
    try:
        try:
            await _reap(intermediate, backend)
        except BaseException as exc:  # reaped all the same: see _reap
            interrupted = exc
        try:
            pid = _learn_pid(request, intermediate, report_fd)
        except Exception:
            if interrupted is not None:
                raise interrupted from None  # nothing runs: the interruption matters more
            raise
        if pid_file is not None:
            try:
                pid_file.commit(pid)
            except BaseException:
                # The caller asked for a tracked command: an untracked one would be worse.
                # Its pid cannot have been reused: it was running a moment ago.
                os.kill(pid, signal.SIGKILL)
                raise
        if interrupted is not None:
            if pid_file is None:  # nobody would learn its pid
                os.kill(pid, signal.SIGKILL)
            raise interrupted
        return pid
    finally:
        interrupted = None  # no reference cycle through the traceback


def _learn_pid(request: SpawnRequest, intermediate: int, report_fd: int) -> int:
    """Read the report of the intermediate, which has exited: the pid, or the error to raise."""
    try:
        report = _read_report(report_fd)
    finally:
        os.close(report_fd)
    if not report:
        raise ChildProcessError(
            f"detach: the intermediate process {intermediate} ended before it could "
            f"start {request.args!r}"
        )
    pid, error = pickle.loads(report)
    if error is not None:
        raise error
    assert isinstance(pid, int)
    return pid


def _fork_intermediate(request: SpawnRequest, stdio: list[Any]) -> tuple[int, int]:
    """Fork the intermediate; return its pid and the read end of its report pipe."""
    report_read, report_write = os.pipe()
    pass_fds = request.popen_kwargs["pass_fds"]
    try:
        intermediate = subprocess.Popen(
            # Never executed: the intermediate leaves through os._exit().
            ["aioproc-detach-intermediate"],
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            close_fds=True,
            pass_fds=(report_write, *pass_fds),
            start_new_session=True,
            preexec_fn=_intermediate(request, report_write, {report_write, *pass_fds}),
        )
    except BaseException:
        os.close(report_read)
        raise
    finally:
        os.close(report_write)
    # We reap it: with returncode unset, Popen.__del__ would put it on
    # subprocess._active, and the next Popen anywhere would reap it instead.
    intermediate.returncode = 0
    return intermediate.pid, report_read


async def _reap(pid: int, backend: Backend) -> None:
    """Wait for the intermediate to exit, then reap it, through the child watcher."""
    child = _watcher.watch(pid)
    try:
        if child.poll() is None:
            exit_watch = backend.watch(child.exit_fd)
            try:
                await exit_watch.wait_readable()
            finally:
                exit_watch.close()
    finally:
        # Even if the wait was interrupted (a KeyboardInterrupt), the intermediate must
        # not be left a zombie. It exits once the command has started, so a blocking
        # reap here lasts no longer than a spawn.
        child.wait_status()
        child.release()


def _intermediate(request: SpawnRequest, report_fd: int, keep: set[int]) -> Callable[[], NoReturn]:
    """What the intermediate runs, in the forked copy of this process, instead of exec."""
    args, shell, options = request.args, request.shell, request.popen_kwargs
    keep = {0, 1, 2, *keep}
    max_fd = os.sysconf("SC_OPEN_MAX")

    def run() -> NoReturn:
        status = 1
        try:
            # Signals wait until every disposition is back to its default: till then
            # a Python handler could run, and write to the wakeup fd of the loop.
            signal.pthread_sigmask(signal.SIG_SETMASK, _CATCHABLE)
            _close_fds_except(keep, max_fd)  # this lets the caller's Popen return
            for sig in _CATCHABLE:
                with contextlib.suppress(OSError, ValueError):  # signals glibc reserves
                    signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.write(report_fd, _start_command(args, shell, options))
            status = 0
        finally:
            os._exit(status)

    return run


def _start_command(args: Any, shell: bool, options: dict[str, Any]) -> bytes:
    """Start the command, and return its pid or the exception as a pickled report."""
    report: tuple[int | None, BaseException | None]
    try:
        report = (subprocess.Popen(args, shell=shell, **options).pid, None)
    except Exception as exc:
        report = (None, exc)
    try:
        data = pickle.dumps(report)
    except Exception as exc:
        data = b""
        problem = f"its report could not be pickled: {exc!r}"
    else:
        problem = f"its report took {len(data)} bytes"
    if not data or len(data) > _REPORT_LIMIT:
        error = subprocess.SubprocessError(f"detach: {report[1]!r}"[:1000] + f" ({problem})")
        data = pickle.dumps((None, error))
    return data


def _close_fds_except(keep: set[int], max_fd: int) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(max_fd, low))


def _read_report(fd: int) -> bytes:
    """Read the report of an intermediate that has exited.

    Its one write was complete before it exited. The pipe may still have a writer
    (a process another thread forked meanwhile), so read what is there, without
    waiting for EOF.
    """
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, _REPORT_LIMIT + 1):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def _is_path(value: object) -> bool:
    return isinstance(value, (str, bytes, os.PathLike))


async def _open_paths(
    stdin: DetachFile, stdout: DetachFile, stderr: DetachFile
) -> tuple[list[Any], list[int]]:
    """Open the paths given for stdio; return what Popen takes, and the fds we opened.

    Each path is opened in a worker thread: opening a FIFO waits for its other
    end, and a network filesystem can take its time, and the loop must not wait
    with them. A cancelled open is abandoned, never left holding an fd (see
    :class:`_Opening`).
    """
    stdio: list[Any] = []
    opened: list[int] = []
    flags = (
        os.O_RDONLY,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    )
    try:
        for value, flag in zip((stdin, stdout, stderr), flags, strict=True):
            if _is_path(value):
                fd = await _Opening(value, flag).run()  # type: ignore[arg-type]
                opened.append(fd)
                stdio.append(fd)
            else:
                stdio.append(value)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return stdio, opened


class _Opening:
    """``os.open()`` of one path in a worker thread, which a cancellation abandons.

    An abandoned open that succeeds later closes its fd itself. One that waits
    on a FIFO for the other end is released by opening that end, non-blocking,
    and closing it again, until the thread has returned. One abandoned before its
    thread started never opens.
    """

    def __init__(self, path: StrOrBytesPath, flags: int) -> None:
        self._path = path
        self._flags = flags | os.O_CLOEXEC
        self._lock = threading.Lock()
        self._abandoned = False
        self._started = False
        self._returned = threading.Event()
        self._fd = -1

    async def run(self) -> int:
        try:
            return await to_thread.run_sync(self._open, abandon_on_cancel=True)
        except BaseException:
            with self._lock:
                self._abandoned = True
                fd, self._fd = self._fd, -1
                started = self._started
            if fd >= 0:
                os.close(fd)
            if started and not self._returned.is_set():
                threading.Thread(
                    target=self._release, name="aioproc detach: abandoned open", daemon=True
                ).start()
            raise

    def _open(self) -> int:
        with self._lock:
            if self._abandoned:  # cancelled before this thread ran: nothing to release
                return -1
            self._started = True
        try:
            fd = os.open(self._path, self._flags, 0o666)
        finally:
            self._returned.set()
        with self._lock:
            if not self._abandoned:
                self._fd = fd  # ours, even if the caller is cancelled before it gets it
                return fd
        os.close(fd)
        return -1

    def _release(self) -> None:
        other_end = os.O_WRONLY if self._flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDONLY
        while not self._returned.wait(0.01):
            try:
                if not stat.S_ISFIFO(os.stat(self._path).st_mode):
                    continue  # a slow filesystem: the open returns when it returns
                fd = os.open(self._path, other_end | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            os.close(fd)


class _PidFile:
    """A pid file written atomically: a temporary file, renamed into place.

    The temporary file is made before the command starts, so that a missing
    directory or a permission problem is found while nothing runs yet.
    """

    def __init__(self, path: StrOrBytesPath) -> None:
        self._path = os.fspath(path)
        directory, name = os.path.split(self._path)
        with self._naming_the_pid_file():
            fd, temporary = tempfile.mkstemp(
                suffix=".tmp", prefix=f".{os.fsdecode(name)}.", dir=os.fsdecode(directory) or "."
            )
        self._fd = fd
        self._temporary: str | None = temporary
        os.fchmod(fd, 0o644)  # mkstemp makes it 0o600; a pid file is for others to read

    def commit(self, pid: int) -> None:
        assert self._temporary is not None
        fd, self._fd = self._fd, -1
        with self._naming_the_pid_file():
            try:
                os.write(fd, b"%d\n" % pid)
            finally:
                os.close(fd)
            os.replace(self._temporary, self._path)
        self._temporary = None

    @contextlib.contextmanager
    def _naming_the_pid_file(self) -> Iterator[None]:
        """Errors name the pid file the caller gave, not our temporary file."""
        try:
            yield
        except OSError as exc:
            if exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, self._path) from None

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temporary)
            self._temporary = None
