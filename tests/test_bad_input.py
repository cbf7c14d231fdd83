"""The bad-input tables of docs/bad-input.md, walked row by row.

Each table in docs/bad-input.md follows a ``<!-- bad-input: api, ... -->`` marker. Every
row of every table has at least one case here, and every case names its row:
``test_every_documented_row_has_a_case`` keeps the two in step. Each case runs
on every backend (and engine) that applies, checks the exception type and that
the message names the offending value; the leak check of ``conftest`` runs on each.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvloop

import aioproc

TABLES = Path(__file__).parent.parent / "docs" / "bad-input.md"
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"loop_factory": uvloop.new_event_loop}),
    "trio": ("trio", {}),
}


def documented_rows() -> set[tuple[str, str]]:
    """(table, first cell) of every row of every marked table in docs/bad-input.md."""
    rows = set()
    lines = TABLES.read_text().splitlines()
    for index, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- bad-input: (.+) -->", line.strip())
        if marker is None:
            continue
        for row in lines[index + 3 :]:  # after the header and its separator
            if not row.startswith("|"):
                break
            rows.add((marker.group(1), row.split(" | ")[0].lstrip("| ").strip()))
    return rows


@dataclass
class Case:
    table: str
    row: str  # the first cell of the row in docs/bad-input.md, verbatim
    call: Callable[..., Any]  # an async function of the arguments, or a sync one
    kwargs: dict[str, Any] | Callable[[Path], dict[str, Any]]
    error: type[BaseException]
    text: str  # what the message must contain: the offending value, usually
    backends: tuple[str, ...] = ("asyncio", "uvloop", "trio")
    engines: tuple[str, ...] = ("native", "asyncio")
    name: str = field(default="")


def not_executable(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    return {"command": [str(script)]}


async def open_and_close(command: Any, **kwargs: Any) -> None:
    process = await aioproc.open_process(command, **kwargs)
    await process.aclose()  # only if the bad input got through


def off_linux(call: Callable[..., Any]) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        real, sys.platform = sys.platform, "darwin"
        try:
            return await call(*args, **kwargs)
        finally:
            sys.platform = real

    return run


def square(x: int) -> int:
    return x * x


async def fork_with_a_lambda(**kwargs: Any) -> None:
    # A lambda and a lock as arguments: fine, nothing is pickled on the way in.
    lock = threading.Lock()
    result = await aioproc.fork_call(lambda x, held: x * x + held.locked(), 3, lock, **kwargs)
    assert result == 9


async def send_a_lock(**kwargs: Any) -> None:
    async with aioproc.fork(square, 2, **kwargs) as child:
        await child.channel.send(threading.Lock())


async def parent_channel_here(**kwargs: Any) -> None:
    aioproc.parent_channel()


class NoError(Exception):
    """The row documents that nothing is raised; the call must simply succeed."""


OPEN = "open_process, run_process"
CASES: list[Case] = []


def cases_for(table: str, row: str, *cases: tuple[Any, ...], **options: Any) -> None:
    for call, kwargs, error, text in cases:
        CASES.append(Case(table, row, call, kwargs, error, text, **options))


for call in (open_and_close, aioproc.run_process):
    cases_for(
        OPEN,
        'a program that does not exist, in a list (`["nosuchprog"]`)',
        (call, {"command": ["no-such-program-xyz"]}, FileNotFoundError, "no-such-program-xyz"),
    )
    cases_for(
        OPEN,
        "a file that is not executable",
        (call, not_executable, PermissionError, "script.sh"),
    )
    cases_for(
        OPEN,
        "a `cwd` that does not exist",
        (call, {"command": ["true"], "cwd": "/no/such/dir"}, FileNotFoundError, "/no/such/dir"),
    )
    cases_for(
        OPEN,
        'an empty command (`[]` or `""`)',
        (call, {"command": []}, ValueError, "command is empty"),
        (call, {"command": ""}, ValueError, "command is empty: ''"),
    )
    cases_for(
        OPEN,
        "an argument that is not str, bytes or a path",
        (call, {"command": ["echo", 42]}, TypeError, "command argument 1 must be str, bytes"),
        (call, {"command": ["echo", None]}, TypeError, "not NoneType: None"),
    )
    cases_for(
        OPEN,
        "a command that is not a str or a sequence",
        (call, {"command": 42}, TypeError, "not int: 42"),
    )
    cases_for(
        OPEN,
        "`STDOUT` for stdin or stdout, a negative fd",
        (call, {"command": ["true"], "stdout": subprocess.STDOUT}, ValueError, "stdout=STDOUT"),
        (call, {"command": ["true"], "stdin": subprocess.STDOUT}, ValueError, "stdin=STDOUT"),
        (call, {"command": ["true"], "stderr": -7}, ValueError, "stderr=-7"),
    )
    cases_for(
        OPEN,
        "a stream that is not PIPE, DEVNULL, an fd, a file or None",
        (call, {"command": ["true"], "stdin": "in.txt"}, TypeError, "'in.txt'"),
    )
    cases_for(
        OPEN,
        "`env` with a non-str key or value",
        (call, {"command": ["true"], "env": {"A": 1}}, TypeError, "env['A']"),
        (call, {"command": ["true"], "env": {2: "x"}}, TypeError, "not int: 2"),
    )
    cases_for(
        OPEN,
        "`process_group` negative or not an int, `grace` negative",
        (call, {"command": ["true"], "process_group": -1}, ValueError, "not -1"),
        (call, {"command": ["true"], "process_group": "0"}, ValueError, "not '0'"),
        (call, {"command": ["true"], "grace": -1}, ValueError, "not -1"),
    )
    cases_for(
        OPEN,
        "`grace` not a number",
        (call, {"command": ["true"], "grace": "5"}, TypeError, "not '5'"),
    )
    cases_for(
        OPEN,
        "an unknown keyword",
        (call, {"command": ["true"], "shell": True}, TypeError, "argument 'shell'"),
    )
    cases_for(
        OPEN,
        'an unknown `engine`, or `engine="asyncio"` under trio',
        (call, {"command": ["true"], "engine": "libuv"}, ValueError, "not 'libuv'"),
    )
    cases_for(
        OPEN,
        'an unknown `engine`, or `engine="asyncio"` under trio',
        (call, {"command": ["true"], "engine": "asyncio"}, RuntimeError, "this is trio"),
        backends=("trio",),
        engines=("asyncio",),
    )
    cases_for(
        OPEN,
        "`die_with_parent` not `True`, `False` or a signal number; given off Linux",
        (call, {"command": ["true"], "die_with_parent": 0}, ValueError, "not 0"),
        (call, {"command": ["true"], "die_with_parent": 99}, ValueError, "not 99"),
        (
            off_linux(call),
            {"command": ["true"], "die_with_parent": True},
            NotImplementedError,
            "darwin",
        ),
    )


async def open_shell_status(command: Any, **kwargs: Any) -> None:
    async with aioproc.open_process(command, **kwargs) as process:
        assert await process.wait() == 127, "the shell exits 127 for a missing program"


async def run_shell_status(command: Any, **kwargs: Any) -> None:
    result = await aioproc.run_process(command, check=False, **kwargs)
    assert result.returncode == 127, "the shell exits 127 for a missing program"
    assert b"no-such-program-xyz" in result.stderr, "the shell names the program"


cases_for(
    OPEN,
    'a program that does not exist, in a str (`"nosuchprog"`, run through `/bin/sh`)',
    (open_shell_status, {"command": "no-such-program-xyz"}, NoError, ""),
    (run_shell_status, {"command": "no-such-program-xyz"}, NoError, ""),
    (
        aioproc.run_process,
        {"command": "no-such-program-xyz"},
        subprocess.CalledProcessError,
        "'no-such-program-xyz' returned non-zero exit status 127",
    ),
)
cases_for(
    OPEN,
    "both `input` and `stdin` to `run_process`",
    (
        aioproc.run_process,
        {"command": ["cat"], "input": b"x", "stdin": subprocess.DEVNULL},
        ValueError,
        "only one of stdin and input is allowed",
    ),
)

DETACH = "detach"
cases_for(
    DETACH,
    "`PIPE` for stdin, stdout or stderr",
    *[
        (aioproc.detach, {"command": ["true"], name: subprocess.PIPE}, ValueError, f"{name}=PIPE")
        for name in ("stdin", "stdout", "stderr")
    ],
    engines=("native",),
)
cases_for(
    DETACH,
    "a stream that is not DEVNULL, a path, an fd, a file or None",
    (aioproc.detach, {"command": ["true"], "stdout": 1.5}, TypeError, "not float: 1.5"),
    engines=("native",),
)
cases_for(
    DETACH,
    "a stdout, stderr or stdin path that cannot be opened",
    (
        aioproc.detach,
        {"command": ["true"], "stdout": "/no/such/dir/out.log"},
        FileNotFoundError,
        "/no/such/dir/out.log",
    ),
    (
        aioproc.detach,
        {"command": ["true"], "stdin": "/no/such/in"},
        FileNotFoundError,
        "/no/such/in",
    ),
    engines=("native",),
)
cases_for(
    DETACH,
    "a `pid_file` in a missing or read-only directory",
    (
        aioproc.detach,
        {"command": ["true"], "pid_file": "/no/such/dir/x.pid"},
        FileNotFoundError,
        "/no/such/dir",
    ),
    engines=("native",),
)
cases_for(
    DETACH,
    "an fd in `pass_fds` that is not open",
    (aioproc.detach, {"command": ["true"], "pass_fds": [987]}, OSError, "Bad file descriptor"),
    engines=("native",),
)
# "raises as for open_process": the rows of the first table that apply to detach too.
for kwargs, error, text in [
    ({"command": ["no-such-program-xyz"]}, FileNotFoundError, "no-such-program-xyz"),
    (not_executable, PermissionError, "script.sh"),
    ({"command": ["true"], "cwd": "/no/such/dir"}, FileNotFoundError, "/no/such/dir"),
    ({"command": []}, ValueError, "command is empty"),
    ({"command": ["echo", 42]}, TypeError, "command argument 1 must be str, bytes"),
    ({"command": 42}, TypeError, "not int: 42"),
    ({"command": ["true"], "stdout": subprocess.STDOUT}, ValueError, "stdout=STDOUT"),
    ({"command": ["true"], "stderr": -7}, ValueError, "stderr=-7"),
    ({"command": ["true"], "env": {"A": 1}}, TypeError, "env['A']"),
    ({"command": ["true"], "shell": True}, TypeError, "argument 'shell'"),
]:
    CASES.append(Case(DETACH, "", aioproc.detach, kwargs, error, text, engines=("native",)))

FORK = "fork"
cases_for(
    FORK,
    "`fn` that is not callable",
    (aioproc.fork_call, {"fn": 42}, TypeError, "fn must be callable, not int: 42"),
    engines=("native",),
)
cases_for(
    FORK,
    '`on_threads` other than `"warn"`, `"refuse"` or `"allow"`',
    (aioproc.fork_call, {"fn": square, "on_threads": "maybe"}, ValueError, "not 'maybe'"),
    engines=("native",),
)
cases_for(
    FORK,
    "`grace` negative, or not a number",
    (aioproc.fork_call, {"fn": square, "grace": -1}, ValueError, "not -1"),
    (aioproc.fork_call, {"fn": square, "grace": "1"}, TypeError, "not '1'"),
    engines=("native",),
)
cases_for(
    FORK,
    "arguments that cannot be pickled (a lambda, a lock, an open socket)",
    (fork_with_a_lambda, {}, NoError, ""),
    engines=("native",),
)
cases_for(
    FORK,
    "a result that cannot be pickled",
    (aioproc.fork_call, {"fn": threading.Lock}, pickle.PicklingError, "_thread.lock"),
    engines=("native",),
)
cases_for(
    FORK,
    "a channel message that cannot be pickled",
    (send_a_lock, {}, pickle.PicklingError, "a _thread.lock cannot be pickled"),
    engines=("native",),
)
cases_for(
    FORK,
    "`parent_channel()` outside a forked child",
    (parent_channel_here, {}, RuntimeError, "only available in a child started by aioproc.fork"),
    engines=("native",),
)


def _runs() -> list[Any]:
    runs = []
    for index, case in enumerate(CASES):
        for backend in case.backends:
            for engine in case.engines:
                # The asyncio engine needs an asyncio loop: on trio only the case
                # about that very error runs it.
                if backend == "trio" and engine == "asyncio" and case.backends != ("trio",):
                    continue
                label = case.row or "as for open_process"
                runs.append(
                    pytest.param(
                        case, backend, engine, id=f"{case.table}-{index}-{backend}-{engine}-{label}"
                    )
                )
    return runs


@pytest.mark.parametrize(("case", "backend", "engine"), _runs())
def test_bad_input(case: Case, backend: str, engine: str, tmp_path: Path) -> None:
    kwargs = dict(case.kwargs(tmp_path) if callable(case.kwargs) else case.kwargs)
    if case.table == OPEN:
        kwargs.setdefault("engine", engine)
    if case.table == FORK:
        kwargs.setdefault("on_threads", "allow")  # the trio test runner has a thread

    async def attempt() -> None:
        if case.table == FORK and "fn" in kwargs:
            fn = kwargs.pop("fn")
            await case.call(fn, **kwargs)
        else:
            command = kwargs.pop("command", None)
            await (case.call(command, **kwargs) if command is not None else case.call(**kwargs))

    name, options = BACKENDS[backend]
    if case.error is NoError:
        anyio.run(attempt, backend=name, backend_options=options)
        return
    with pytest.raises(case.error) as caught:
        anyio.run(attempt, backend=name, backend_options=options)
    assert case.text in str(caught.value), f"{caught.value!r} does not name {case.text!r}"


def test_every_documented_row_has_a_case() -> None:
    documented = documented_rows()
    assert {table for table, _ in documented} == {OPEN, DETACH, FORK}
    covered = {(case.table, case.row) for case in CASES if case.row}
    assert documented - covered == set(), "rows of docs/bad-input.md without a test case"
    assert covered - documented == set(), "test cases whose row is not in docs/bad-input.md"


def test_fds_are_released_on_every_failed_spawn() -> None:
    """The leak check runs after each case above; this pins the fd count within one loop."""
    from .helpers import open_fds

    async def many() -> None:
        before = open_fds()
        for _ in range(50):
            with pytest.raises(FileNotFoundError):
                await aioproc.open_process(["no-such-program-xyz"])
            with pytest.raises(FileNotFoundError):
                await aioproc.run_process(["true"], cwd="/no/such/dir")
        assert open_fds() == before

    anyio.run(many)
