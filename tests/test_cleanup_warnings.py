"""No warnings filter changes whether cleanup happens, in the fork and unattended wings.

Audit (issue 10, item 4): the only ``warnings.warn`` of ``_fork/`` and
``_unattended/`` is fork's warning about other threads, and it comes before
anything is made (no pipe, no child). ``ChildScope`` and ``detach`` warn
nothing themselves. Each path is run here with every warning turned into an
error, and the leak check after each test sees that nothing is left.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import aioproc

from .helpers import children_of_us
from .test_detach import _settled, _token


def add(a: int) -> int:
    return a + 1


@pytest.fixture
def other_thread() -> Iterator[None]:
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="idle test thread")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


async def test_forks_thread_warning_as_an_error_leaves_nothing(
    anyio_backend: object, other_thread: None
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="other thread"):
            await aioproc.fork_call(add, 1)
        with pytest.raises(RuntimeWarning, match="other thread"):
            async with aioproc.fork(add, 1):
                pass
    assert not children_of_us()


async def test_child_scope_stops_its_children_under_warnings_as_errors(
    anyio_backend: object,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError):
            async with aioproc.ChildScope() as scope:
                process = await scope.start(["sleep", "60"])
                raise KeyError("boom")
    assert process.returncode == -signal.SIGTERM
    assert not children_of_us()


async def test_detach_cleans_up_under_warnings_as_errors(
    anyio_backend: object, tmp_path: Path
) -> None:
    token = _token()
    in_the_way = tmp_path / "in-the-way.pid"
    in_the_way.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(IsADirectoryError):
            await aioproc.detach(["sleep", token], pid_file=in_the_way)
        with anyio.move_on_after(0.001):  # cancelled wherever it is
            await aioproc.detach(["sleep", token], pid_file=tmp_path / "p.pid")
    running = await _settled(token)
    if running:  # the cancellation came after the start: the pid file tracks it
        assert {int((tmp_path / "p.pid").read_text())} == running
        for pid in running:
            os.kill(pid, signal.SIGKILL)
    assert not children_of_us()
