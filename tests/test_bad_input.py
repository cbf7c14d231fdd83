"""The bad-input table of the README, one row per case; the leak check runs on each."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import aioproc


def _not_executable(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    return {"command": [str(script)]}


ROWS: list[tuple[str, Any, type[Exception], str]] = [
    # (case, arguments or a factory of them, exception, text the message must contain)
    (
        "missing program",
        {"command": ["no-such-program-xyz"]},
        FileNotFoundError,
        "no-such-program-xyz",
    ),
    ("not executable", _not_executable, PermissionError, "script.sh"),
    (
        "missing cwd",
        {"command": ["true"], "cwd": "/no/such/dir"},
        FileNotFoundError,
        "/no/such/dir",
    ),
    ("empty list", {"command": []}, ValueError, "command is empty"),
    ("empty string", {"command": ""}, ValueError, "command is empty"),
    (
        "int argument",
        {"command": ["echo", 42]},
        TypeError,
        "command argument 1 must be str, bytes or os.PathLike, not int: 42",
    ),
    ("None argument", {"command": ["echo", None]}, TypeError, "not NoneType: None"),
    ("command not a sequence", {"command": 42}, TypeError, "not int: 42"),
    (
        "STDOUT for stdout",
        {"command": ["true"], "stdout": subprocess.STDOUT},
        ValueError,
        "stdout=STDOUT is not valid",
    ),
    (
        "STDOUT for stdin",
        {"command": ["true"], "stdin": subprocess.STDOUT},
        ValueError,
        "stdin=STDOUT is not valid",
    ),
    ("negative fd", {"command": ["true"], "stdout": -7}, ValueError, "stdout=-7"),
    (
        "stream of a wrong type",
        {"command": ["true"], "stdin": "in.txt"},
        TypeError,
        "stdin must be PIPE, DEVNULL",
    ),
    (
        "unknown keyword",
        {"command": ["true"], "shell": True},
        TypeError,
        "unexpected keyword argument 'shell'",
    ),
    (
        "bad process_group",
        {"command": ["true"], "process_group": -1},
        ValueError,
        "process_group must be",
    ),
    (
        "unknown engine",
        {"command": ["true"], "engine": "libuv"},
        ValueError,
        "engine must be one of 'native', 'asyncio', not 'libuv'",
    ),
    ("bad env", {"command": ["true"], "env": {"A": 1}}, TypeError, "int"),
    (
        "bad die_with_parent",
        {"command": ["true"], "die_with_parent": 0},
        ValueError,
        "die_with_parent must be True, False or a signal number, not 0",
    ),
]


@pytest.mark.parametrize(("case", "arguments", "error", "text"), ROWS, ids=[row[0] for row in ROWS])
async def test_open_process_bad_input(
    engine: str,
    tmp_path: Path,
    case: str,
    arguments: Any,
    error: type[Exception],
    text: str,
) -> None:
    kwargs = dict(arguments(tmp_path) if callable(arguments) else arguments)
    kwargs.setdefault("engine", engine)
    command = kwargs.pop("command")
    with pytest.raises(error) as caught:
        await aioproc.open_process(command, **kwargs)
    assert text in str(caught.value)


@pytest.mark.parametrize(("case", "arguments", "error", "text"), ROWS, ids=[row[0] for row in ROWS])
async def test_run_process_bad_input(
    engine: str,
    tmp_path: Path,
    case: str,
    arguments: Any,
    error: type[Exception],
    text: str,
) -> None:
    kwargs = dict(arguments(tmp_path) if callable(arguments) else arguments)
    kwargs.setdefault("engine", engine)
    command = kwargs.pop("command")
    with pytest.raises(error) as caught:
        await aioproc.run_process(command, **kwargs)
    assert text in str(caught.value)
