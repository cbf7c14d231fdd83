"""``run_pipeline``: run a pipeline to completion and capture its output, like ``run_process``."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio import create_task_group, move_on_after

from ._pipeline import pipeline
from ._stage import UNSET, Command, Stage, as_stage, describe

if TYPE_CHECKING:
    from .._spawn import FileSpec, PipeReceiveStream, PipeSendStream, StrOrBytesPath

__all__ = ["CompletedPipeline", "PipelineError", "run_pipeline"]

_PIPE = subprocess.PIPE


class CompletedPipeline:
    """What :func:`run_pipeline` returns: every stage's status, and what was captured."""

    __slots__ = ("args", "pids", "returncode", "returncodes", "stderr", "stderrs", "stdout")

    def __init__(
        self,
        args: tuple[Command, ...],
        returncode: int,
        returncodes: list[int],
        pids: list[int],
        stdout: bytes | None,
        stderrs: list[bytes | None],
    ) -> None:
        self.args = args
        """The stages' commands."""
        self.returncode = returncode
        """The pipeline's status, as bash's ``$?`` (see ``pipefail``)."""
        self.returncodes = returncodes
        """Each stage's status, as bash's ``PIPESTATUS`` (``-N``: killed by signal N)."""
        self.pids = pids
        self.stdout = stdout
        """The last stage's output, if captured."""
        self.stderrs = stderrs
        """Each stage's stderr, if captured (``None`` for a stage whose stderr went elsewhere)."""
        self.stderr: bytes | None = (
            None if all(e is None for e in stderrs) else b"".join(e or b"" for e in stderrs)
        )
        """Every captured stderr, stage after stage."""

    def __repr__(self) -> str:
        return (
            f"CompletedPipeline(args={self.args!r}, returncode={self.returncode}, "
            f"returncodes={self.returncodes}, stdout={self.stdout!r}, stderr={self.stderr!r})"
        )

    def check_returncode(self) -> None:
        """Raise :class:`PipelineError` if the pipeline's status is nonzero."""
        if self.returncode != 0:
            raise PipelineError(self)


class PipelineError(subprocess.CalledProcessError):
    """A pipeline whose status was nonzero; it names the stage that failed.

    A ``subprocess.CalledProcessError`` for that stage (``returncode``, ``cmd``,
    its ``stderr``; ``output`` is the pipeline's stdout), plus ``stage`` (its
    index), ``returncodes`` and ``stderrs`` of every stage, and ``result``.
    """

    def __init__(self, result: CompletedPipeline) -> None:
        self.result = result
        self.returncodes = result.returncodes
        self.stderrs = result.stderrs
        self.stage = _failed_stage(result)
        super().__init__(
            result.returncodes[self.stage],
            result.args[self.stage],
            result.stdout,
            result.stderrs[self.stage],
        )

    def __str__(self) -> str:
        code = self.returncode
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        text = f"stage {self.stage} of the pipeline ({describe(self.cmd)}) {how}"
        if len(self.returncodes) > 1:
            text += f"; statuses {self.returncodes}"
        errors = self.stderr
        if errors:
            tail = errors[-2000:].decode(errors="replace").rstrip()
            text += f"; its stderr: {tail}"
        return text


def _failed_stage(result: CompletedPipeline) -> int:
    """The stage whose status is the pipeline's (the rightmost with it)."""
    for index in reversed(range(len(result.returncodes))):
        if result.returncodes[index] == result.returncode:
            return index
    raise AssertionError("the pipeline's status is no stage's")  # pragma: no cover


async def run_pipeline(
    *commands: Command | Stage,
    input: bytes | bytearray | memoryview | None = None,
    stdin: FileSpec | PipeReceiveStream = None,
    stdout: FileSpec | PipeSendStream = _PIPE,
    stderr: FileSpec = _PIPE,
    check: bool = True,
    pipefail: bool = True,
    timeout: float | None = None,  # noqa: ASYNC109 - as run_process's
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 5.0,
) -> CompletedPipeline:
    """Run ``commands`` as a pipeline, feed it ``input``, return the statuses and captured output.

    The last stage's stdout is captured, and with ``stderr=PIPE`` (the default)
    each stage's stderr separately, so that an error can name the stage that
    failed and show what it said. They are read while ``input`` is written.
    With ``check=True`` (the default) a nonzero status raises
    :class:`PipelineError` (a ``subprocess.CalledProcessError``). The status
    follows bash: with ``pipefail=True`` the rightmost failure counts, so a
    stage killed by SIGPIPE upstream of one that stopped reading early counts
    too, as in ``set -o pipefail``.

    On ``timeout`` or a cancellation every stage is stopped (SIGTERM,
    ``grace``, SIGKILL) and reaped; a timeout then raises
    ``subprocess.TimeoutExpired``. The other arguments are those of
    :func:`pipeline`.
    """
    if input is not None:
        if stdin is not None:
            raise ValueError("only one of stdin and input is allowed")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, not {type(input).__name__}")
        stdin = _PIPE
    stages = [as_stage(command, index) for index, command in enumerate(commands)]
    if stderr == _PIPE:  # one pipe per stage, to tell whose error is whose
        stages = [
            Stage(s.command, cwd=s.cwd, env=s.env, stderr=_PIPE) if s.stderr is UNSET else s
            for s in stages
        ]
    outputs: list[bytes] = []
    errors: dict[int, bytes] = {}
    with move_on_after(timeout) as timer:
        async with pipeline(
            *stages,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pipefail=pipefail,
            cwd=cwd,
            env=env,
            grace=grace,
        ) as running:

            async def read_stdout(stream: PipeReceiveStream) -> None:
                outputs.append(await stream.read_all())

            async def read_stderr(index: int, stream: PipeReceiveStream) -> None:
                errors[index] = await stream.read_all()

            async with create_task_group() as tg:
                if running.stdin is not None:
                    tg.start_soon(_feed, running.stdin, input)
                for index, stage in enumerate(running.stages):
                    if stage.stderr is not None:
                        tg.start_soon(read_stderr, index, stage.stderr)
                if running.stdout is not None:
                    await read_stdout(running.stdout)
            await running.wait()
    if timer.cancelled_caught:
        assert timeout is not None
        # What was read before the timeout stays in the streams (see read_all()).
        output = None if running.stdout is None else running.stdout._take_pending()
        captured = [stage.stderr._take_pending() for stage in running.stages if stage.stderr]
        commands_given: Any = running.args
        raise subprocess.TimeoutExpired(
            commands_given,
            timeout,
            output=output,
            stderr=b"".join(captured) if captured else None,
        )
    stderrs = [errors.get(index) for index in range(len(stages))]
    codes = running.returncodes
    result = CompletedPipeline(
        running.args,
        running.returncode if running.returncode is not None else 0,
        [code if code is not None else 0 for code in codes],
        running.pids,
        outputs[0] if outputs else None,
        stderrs,
    )
    if check:
        result.check_returncode()
    return result


async def _feed(stdin: PipeSendStream, data: bytes | bytearray | memoryview | None) -> None:
    """Write ``data`` (if any) and close stdin; a first stage may exit without reading it all."""
    try:
        if data:
            await stdin.send(data)  # type: ignore[arg-type]
    except anyio.BrokenResourceError:
        pass
    finally:
        await stdin.aclose()
