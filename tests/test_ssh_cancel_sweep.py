"""A cancellation at every await point of a remote open_process and run_process leaves nothing.

As ``test_cancel_sweep.py`` does locally (see ``cancel_sweep.py``): the N-th
await reached cancels the block, for N = 1, 2, 3, ... until the block
completes. After each run: no local child or fd left, and within grace plus
0.1 s of the block ending, no remote process of the command either.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from aioproc import ssh

from .cancel_sweep import Sweep
from .helpers import children_of_us, open_fds
from .ssh_server import SSHServer
from .test_ssh import GRACE, commands_running, server_fixture, sshd_server_fixture  # noqa: F401 - fixtures

DATA = os.urandom(20_000)


@pytest.fixture
def sweep(monkeypatch: pytest.MonkeyPatch) -> Sweep:
    sweep = Sweep()
    sweep.install(monkeypatch)
    return sweep


async def talk_to_cat(host: ssh.Host) -> None:
    async with host.open_process(["cat"], grace=GRACE) as cat:
        assert cat.stdin is not None
        assert cat.stdout is not None
        stdin, stdout = cat.stdin, cat.stdout
        received = bytearray()

        async def feed() -> None:
            for start in range(0, len(DATA), 5_000):
                await stdin.send(DATA[start : start + 5_000])
            await stdin.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            async for chunk in stdout:
                received += chunk
        assert await cat.wait() == 0
    assert received == DATA


async def run_through_cat(host: ssh.Host) -> None:
    result = await host.run_process(["cat"], input=DATA, grace=GRACE)
    assert result.stdout == DATA


async def wait_for_cat(host: ssh.Host) -> None:
    """wait() called while the command runs (cat reads stdin until we close it, once
    wait() is blocked): the wait on the control connection, whatever the load."""
    async with host.open_process(["cat"], stdout=subprocess.DEVNULL, grace=GRACE) as cat:
        stdin = cat.stdin
        assert stdin is not None

        async def close_stdin() -> None:
            await anyio.wait_all_tasks_blocked()
            stdin.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(close_stdin)
            assert await cat.wait() == 0


async def sweep_remote(
    sweep: Sweep, server: SSHServer, scenario: Callable[[ssh.Host], Awaitable[None]]
) -> int:
    """Sweep ``scenario`` over one connection; return how many await points it went through."""
    async with ssh.connect(server.host, config=server.config, grace=GRACE) as host:
        fds, children = open_fds(), set(children_of_us())
        target = 0
        while True:
            target += 1
            assert target < 2000, "the scenario never finished"
            sweep.reached, sweep.target = 0, target
            with anyio.CancelScope() as scope:
                sweep.scope = scope
                try:
                    await scenario(host)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    raise AssertionError(
                        f"cancelling at await #{target} raised {exc!r}, not a cancellation"
                    ) from exc
            sweep.scope = None
            ended = time.monotonic()
            while commands_running(server, "cat"):
                assert time.monotonic() - ended <= GRACE + 0.1, (
                    f"cancelling at await #{target} left the remote command running"
                )
                await anyio.sleep(0.005)
            await settle(fds, children, target)
            if sweep.reached < target:
                return target - 1


async def step_remote(server: SSHServer, scenario: Callable[[ssh.Host], Awaitable[None]]) -> int:
    """Cancel ``scenario`` after 0, 0.5, 1 ... ms until it completes: this reaches the awaits
    that are not aioproc's fd waits (a session slot, the lock on the control connection).
    Return the steps."""
    async with ssh.connect(server.host, config=server.config, grace=GRACE) as host:
        fds, children = open_fds(), set(children_of_us())
        step = 0
        while True:
            step += 1
            assert step < 2000, "the scenario never finished"
            with anyio.move_on_after((step - 1) * 0.0005) as scope:
                await scenario(host)
            ended = time.monotonic()
            while commands_running(server, "cat"):
                assert time.monotonic() - ended <= GRACE + 0.1, (
                    f"cancelling after {step - 1} steps left the remote command running"
                )
                await anyio.sleep(0.005)
            await settle(fds, children, step)
            if not scope.cancelled_caught:
                return step - 1


async def settle(fds: set[int], children: set[int], target: int) -> None:
    """No fd, no child (running or zombie) but those from before: the master among them,
    whose state (running, sleeping) may change, so only pids are compared."""
    with anyio.move_on_after(5):
        while open_fds() != fds or set(children_of_us()) != children:
            await anyio.sleep(0.005)
    assert open_fds() == fds, f"cancelling at await #{target} leaked fds"
    assert set(children_of_us()) == children, f"cancelling at await #{target} left children"
    assert "Z" not in children_of_us().values()


@pytest.mark.anyio
async def test_sweep_remote_open_process(server: SSHServer, sweep: Sweep) -> None:
    swept = await sweep_remote(sweep, server, talk_to_cat)
    print("swept", swept)
    assert swept >= 1  # closing stdin is one; the others only wait if data is not there yet


@pytest.mark.anyio
async def test_sweep_remote_run_process(server: SSHServer, sweep: Sweep) -> None:
    swept = await sweep_remote(sweep, server, run_through_cat)
    print("swept", swept)
    assert swept >= 1  # closing stdin is one; the others only wait if data is not there yet


@pytest.mark.anyio
async def test_sweep_remote_wait(server: SSHServer, sweep: Sweep) -> None:
    swept = await sweep_remote(sweep, server, wait_for_cat)
    print("swept", swept)
    assert swept >= 1  # the wait for cat, which reads stdin until wait() has begun


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", [talk_to_cat, run_through_cat])
async def test_stepped_deadline_remote(
    server: SSHServer, scenario: Callable[[ssh.Host], Awaitable[None]]
) -> None:
    assert await step_remote(server, scenario) > 3
