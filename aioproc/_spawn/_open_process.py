"""``open_process``: start a child with pipes, as anyio's function of that name does."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from .._backends import current_backend
from ._process import Opener, Process, check_grace
from ._pty import STDERR_DEFAULT, Pty, check_pty
from ._request import FileSpec, SpawnRequest, StrOrBytesPath, spawn

__all__ = ["ENGINES", "ProcessOpener", "open_process"]

Engine = Literal["native", "asyncio"]
ENGINES: tuple[Engine, ...] = ("native", "asyncio")


def open_process(
    command: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    stdin: FileSpec = subprocess.PIPE,
    stdout: FileSpec = subprocess.PIPE,
    stderr: FileSpec = STDERR_DEFAULT,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    startupinfo: Any = None,
    creationflags: int = 0,
    start_new_session: bool = False,
    pass_fds: Sequence[int] = (),
    user: str | int | None = None,
    group: str | int | None = None,
    extra_groups: Iterable[str | int] | None = None,
    umask: int = -1,
    process_group: int | None = None,
    die_with_parent: bool | int = False,
    grace: float = 5.0,
    deliver_cancel: Callable[[Process], Awaitable[object]] | None = None,
    engine: Engine | None = None,
    pty: bool | Pty = False,
) -> ProcessOpener:
    """Start ``command`` in a child process and return it, with its pipes as anyio streams.

    Use it in any of three ways::

        async with aioproc.open_process(cmd) as process: ...
        process = await aioproc.open_process(cmd)
        async with await aioproc.open_process(cmd) as process: ...  # as with anyio

    ``command`` is a ``str`` (or bytes, or path) to run through ``/bin/sh``, or a
    sequence of arguments to run directly. ``stdin``, ``stdout`` and ``stderr`` each
    take ``PIPE`` (the default), ``DEVNULL``, ``STDOUT`` (stderr only), a file
    descriptor, a file object, or ``None`` to inherit ours. ``cwd``, ``env``,
    ``start_new_session``, ``pass_fds``, ``user``, ``group``, ``extra_groups``,
    ``umask`` and ``process_group`` mean what they mean to ``subprocess.Popen``.

    Leaving the ``async with`` block normally closes the pipes and waits for the
    child. Leaving it by an exception or a cancellation stops the child: stdin is
    closed, SIGTERM is sent, and after ``grace`` seconds SIGKILL; both go to the
    whole process group when the child leads one (``process_group=0`` or
    ``start_new_session=True``). ``deliver_cancel``, an async callable taking the
    process, replaces that SIGTERM-then-SIGKILL step, as in ``trio.run_process``.

    ``die_with_parent=True`` (Linux only) has the kernel send SIGKILL to the child
    when this process dies, even by SIGKILL; give a signal number to send that
    one instead. It is tied to the thread that spawns the child: if the event
    loop runs in a thread that ends, its children get the signal then. It
    makes the spawn fork instead of vfork (see ``PR_SET_PDEATHSIG`` in the README).

    ``engine="asyncio"`` runs the same API over asyncio's own subprocess support
    (libuv under uvloop); it needs an asyncio loop. The default is ``"native"``,
    aioproc's own pipes and child watcher, on every backend.

    ``pty=True`` (or a :class:`Pty` with options) runs the child on a new
    pseudo-terminal, as its controlling terminal: ``stdin`` and ``stdout`` are
    the terminal's master side, stderr goes to the terminal too unless
    ``stderr`` says otherwise, and ``process.pty`` resizes and interrupts it.
    """
    return ProcessOpener(
        command,
        dict(
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            startupinfo=startupinfo,
            creationflags=creationflags,
            start_new_session=start_new_session,
            pass_fds=pass_fds,
            user=user,
            group=group,
            extra_groups=extra_groups,
            umask=umask,
            process_group=process_group,
            die_with_parent=die_with_parent,
        ),
        grace=grace,
        deliver_cancel=deliver_cancel,
        engine=engine,
        pty=pty,
    )


class ProcessOpener(Opener[Process]):
    """What :func:`open_process` returns: await it, or use it with ``async with``."""

    __slots__ = ("_command", "_deliver_cancel", "_engine", "_grace", "_options", "_pty")

    def __init__(
        self,
        command: object,
        options: dict[str, Any],
        *,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
        engine: Engine | None,
        pty: bool | Pty = False,
    ) -> None:
        super().__init__()
        self._pty = pty
        self._command = command
        self._options = options
        self._grace = grace
        self._deliver_cancel = deliver_cancel
        self._engine = engine

    async def _open(self) -> Process:
        grace = check_grace(self._grace)
        if self._deliver_cancel is not None and not callable(self._deliver_cancel):
            raise TypeError(
                f"deliver_cancel must be an async callable, not {self._deliver_cancel!r}"
            )
        engine = self._engine or "native"
        if engine not in ENGINES:
            choices = ", ".join(map(repr, ENGINES))
            raise ValueError(f"engine must be one of {choices}, not {engine!r}")
        pty = check_pty(self._pty)
        if pty is not None:
            if engine != "native":
                raise ValueError(f"pty= needs the native engine, not engine={engine!r}")
            from ._pty import open_pty_process

            return await open_pty_process(
                self._command,
                self._options,
                pty,
                current_backend(),
                grace=grace,
                deliver_cancel=self._deliver_cancel,
            )
        options = self._options
        if options["stderr"] is STDERR_DEFAULT:  # no pty: a pipe, said as PIPE to Popen
            options = {**options, "stderr": subprocess.PIPE}
        request = SpawnRequest(self._command, **options)
        backend = current_backend()
        if engine == "asyncio":
            if backend.name != "asyncio":
                raise RuntimeError(
                    f"engine='asyncio' needs an asyncio event loop, but this is {backend.name}; "
                    "use the default engine"
                )
            from ._asyncio_engine import open_asyncio_process

            return await open_asyncio_process(
                self._command, request, grace=grace, deliver_cancel=self._deliver_cancel
            )

        from ._native import NativeProcess

        # The last point where a cancellation can arrive: once the child exists,
        # nothing awaits until the caller holds the Process that owns it. (No
        # yield here: the first wait on the child's pipes or exit will yield.)
        await backend.checkpoint_if_cancelled()
        return NativeProcess(
            self._command,
            spawn(request),
            backend,
            leads_group=request.leads_group,
            grace=grace,
            deliver_cancel=self._deliver_cancel,
        )
