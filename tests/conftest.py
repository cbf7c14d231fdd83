"""Every behaviour test runs on asyncio, asyncio with uvloop, and trio.

Tests that take the ``engine`` fixture also run aioproc's ``engine="asyncio"``
on the two asyncio backends. Every async test is checked for leaks: the fds
of this process and its children are the same after the test as before, and
no child is left a zombie.

The child watcher is chosen by ``AIOPROC_CHILD_WATCHER`` (CI runs the suite
once with ``pidfd`` and once with ``thread``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import uvloop

from .helpers import Strays, children_of_us, open_fds

BACKENDS = {
    "asyncio": "asyncio",
    "uvloop": ("asyncio", {"loop_factory": uvloop.new_event_loop}),
    "trio": "trio",
}


@pytest.fixture(params=list(BACKENDS.values()), ids=list(BACKENDS))
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.fixture(params=["native", "asyncio"])
def engine(request: pytest.FixtureRequest) -> str:
    """The aioproc engine under test; ``asyncio`` only exists on the asyncio backends."""
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the combinations that cannot exist: the asyncio engine on trio."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("anyio_backend") == "trio" and params.get("engine") == "asyncio":
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_sessionstart(session: pytest.Session) -> None:
    """Let each backend create its process-wide fds before the first leak check.

    uvloop keeps a pipe for the life of the process from its first loop on; the
    asyncio engine's first child may set up more. Those are not leaks.
    """
    import anyio

    import aioproc

    async def spawn_once(engines: tuple[str, ...]) -> None:
        for engine in engines:
            await aioproc.run_process(["true"], engine=engine)  # type: ignore[arg-type]

    for name, backend in BACKENDS.items():
        backend_name, options = (backend, {}) if isinstance(backend, str) else backend
        engines = ("native",) if name == "trio" else ("native", "asyncio")
        anyio.run(spawn_once, engines, backend=backend_name, backend_options=options)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail a test that leaves an fd open, a child running or a zombie behind.

    It runs outside the event loop: anyio's test runner opens the loop for the
    test and closes it before this fixture is torn down.
    """
    fds_before = open_fds()
    children_before = children_of_us()
    yield
    # A waiter thread of the thread watcher may still be closing its pipe end.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if open_fds() == fds_before and children_of_us() == children_before:
            break
        time.sleep(0.01)
    leaked = open_fds() - fds_before
    assert not leaked, f"fds leaked: {describe_fds(leaked)}"
    left = set(children_of_us().items()) - set(children_before.items())
    assert not left, f"children left behind (pid, state): {sorted(left)}"


@pytest.fixture
def strays() -> Iterator[Strays]:
    """Detached processes and the like, which outlive the test: killed by pid at its end."""
    found = Strays()
    try:
        yield found
    finally:
        found.kill_all()


def describe_fds(fds: set[int]) -> list[str]:
    described = []
    for fd in sorted(fds):
        try:
            described.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            described.append(f"{fd} -> ?")
    return described
