"""One stage of a pipeline: its command, its own options, and how it is started.

A stage is started as :func:`aioproc.open_process` starts a child (the same
request checks, the same ``Popen`` spawn, the same :class:`Process`), but with
both ends of its stdio chosen by the pipeline. Whatever a stage needs to run
somewhere else (another host, say) is a matter of :meth:`Stage._start`: the
pipeline hands it fds and a process group, and takes back a :class:`Process`.
"""

from __future__ import annotations

import enum
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from .._spawn import NativeProcess, SpawnRequest, check_command, check_file, spawn

if TYPE_CHECKING:
    from .._backends import Backend
    from .._spawn import FileSpec, Process, StrOrBytesPath

__all__ = ["UNSET", "Command", "Stage", "describe"]


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET
"""A stage option left to the pipeline."""

Command: TypeAlias = "StrOrBytesPath | Sequence[StrOrBytesPath]"


class Stage:
    """A command of a :func:`aioproc.pipeline`, with options of its own.

    A plain command (a sequence of arguments, or a str run through ``/bin/sh``)
    is a stage with every option taken from the pipeline. ``Stage`` sets them
    for one stage: ``cwd``, ``env``, and ``stderr`` (``PIPE`` gives this stage a
    pipe of its own, read as ``pipeline.stages[i].stderr``).
    """

    __slots__ = ("command", "cwd", "env", "stderr")

    def __init__(
        self,
        command: Command,
        *,
        cwd: StrOrBytesPath | _Unset | None = UNSET,
        env: Mapping[str, str] | _Unset | None = UNSET,
        stderr: FileSpec | _Unset = UNSET,
    ) -> None:
        if isinstance(command, Stage):
            raise TypeError(f"a Stage takes a command, not another Stage: {command!r}")
        check_command(command)
        if stderr is not UNSET:
            check_file("stderr", stderr, "PIPE, DEVNULL, STDOUT, a file descriptor, a file object")
        self.command = command
        self.cwd = cwd
        self.env = env
        self.stderr = stderr

    def __repr__(self) -> str:
        options = "".join(
            f", {name}={value!r}"
            for name in ("cwd", "env", "stderr")
            if (value := getattr(self, name)) is not UNSET
        )
        return f"Stage({self.command!r}{options})"

    def _request(
        self,
        index: int,
        *,
        stderr: FileSpec,
        cwd: StrOrBytesPath | None,
        env: Mapping[str, str] | None,
    ) -> SpawnRequest:
        """Check this stage's spawn; its stdio and process group are filled in at start."""
        try:
            return SpawnRequest(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr if self.stderr is UNSET else self.stderr,
                cwd=cwd if self.cwd is UNSET else self.cwd,
                env=env if self.env is UNSET else self.env,
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"stage {index} of the pipeline: {exc}") from None

    def _start(
        self,
        index: int,
        request: SpawnRequest,
        *,
        stdin: FileSpec,
        stdout: FileSpec,
        process_group: int,
        backend: Backend,
        grace: float,
    ) -> Process:
        """Start the stage on ``stdin`` and ``stdout``, in ``process_group`` (0: lead one).

        The error the spawn raises names the stage: an ``OSError`` keeps its
        type, errno and filename, so ``except FileNotFoundError`` still works.
        """
        request.stdin, request.stdout = stdin, stdout
        request.popen_kwargs["process_group"] = process_group
        request.leads_group = process_group == 0
        try:
            spawned = spawn(request)
        except OSError as exc:
            where = f"stage {index} of the pipeline: {describe(self.command)}"
            named = type(exc)(exc.errno, f"{exc.strerror} ({where})", exc.filename)
            raise named.with_traceback(exc.__traceback__) from None
        except BaseException as exc:
            exc.add_note(f"starting stage {index} of the pipeline: {describe(self.command)}")
            raise
        return NativeProcess(
            self.command,
            spawned,
            backend,
            leads_group=request.leads_group,
            grace=grace,
            deliver_cancel=None,
        )


def as_stage(command: object, index: int) -> Stage:
    if isinstance(command, Stage):
        return command
    try:
        return Stage(command)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"stage {index} of the pipeline: {exc}") from None


def describe(command: Any) -> str:
    """The command as a shell would show it."""
    if isinstance(command, (str, bytes, os.PathLike)):
        return repr(os.fspath(command))
    return shlex.join(os.fsdecode(arg) for arg in command)
