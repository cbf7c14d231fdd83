"""The programs of ``docs/ssh.md`` run as written against the test sshd, and print what it says.

Each ```python block is a complete program; its expected output is the ``#> ``
comments. The host comes from ``AIOPROC_SSH_HOST`` (and ``AIOPROC_SSH_CONFIG``),
set here to the test server. Each runs on asyncio (as written), uvloop and trio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .ssh_server import SSHServer
from .test_ssh import server_fixture, sshd_server_fixture  # noqa: F401 - fixtures

PAGE = Path(__file__).parent.parent / "docs" / "ssh.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
RUNS = {
    "asyncio": "anyio.run(main)",
    "uvloop": (
        "anyio.run(main, backend_options={'loop_factory': __import__('uvloop').new_event_loop})"
    ),
    "trio": "anyio.run(main, backend='trio')",
}


def test_the_page_has_programs() -> None:
    assert len(BLOCKS) >= 2
    for block in BLOCKS:
        assert block.rstrip().endswith("anyio.run(main)")
        assert "#> " in block


@pytest.mark.parametrize("backend", list(RUNS))
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_program(server: SSHServer, index: int, backend: str) -> None:
    block = BLOCKS[index]
    program = block.rstrip()[: -len("anyio.run(main)")] + RUNS[backend] + "\n"
    expected = [
        line.strip()[len("#> ") :] for line in block.splitlines() if line.strip().startswith("#> ")
    ]
    env = dict(os.environ, AIOPROC_SSH_HOST=server.host, AIOPROC_SSH_CONFIG=server.config)
    env["PYTHONPATH"] = str(PAGE.parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    printed = [line.rstrip() for line in result.stdout.decode().splitlines() if line.strip()]
    assert printed == expected
