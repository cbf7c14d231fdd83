"""The tests that look at signals hold whatever the environment ignores or blocks.

``tests/hostile_signals.py`` starts a command with glibc's reserved signals 32
and 33, SIGINT and SIGPIPE both ignored and blocked, which ``exec`` passes on.
Here it runs pytest on the tests that depend on signal dispositions (detach,
die_with_parent, ChildScope, and the ones that kill a child by a signal), on
every backend, under the child watcher of this run (``AIOPROC_CHILD_WATCHER`` is
inherited). Those that kill a child by SIGINT start it through
``helpers.with_default_signals``: a shell would not undo an ignored SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

WRAPPER = Path(__file__).with_name("hostile_signals.py")
ROOT = Path(__file__).parent.parent


def _bits(*signals: int) -> int:
    return sum(1 << (sig - 1) for sig in signals)


def test_the_wrapper_ignores_and_blocks_the_signals() -> None:
    done = subprocess.run(
        [sys.executable, str(WRAPPER), "cat", "/proc/self/status"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    status = dict(line.split(":\t", 1) for line in done.stdout.splitlines() if ":\t" in line)
    hostile = _bits(32, 33, signal.SIGINT, signal.SIGPIPE)
    assert int(status["SigIgn"], 16) & hostile == hostile
    assert int(status["SigBlk"], 16) & hostile == hostile


def test_the_signal_tests_pass_in_a_hostile_environment() -> None:
    selected = [
        "tests/test_detach.py::test_signals_have_their_default_dispositions",
        "tests/test_detach.py::test_ignored_and_blocked_signals_do_not_leak",
        "tests/test_detach.py::test_survives_sighup_to_the_detaching_process_group",
        "tests/test_detach.py::test_cli_prints_the_pid_and_exits_0",
        "tests/test_die_with_parent.py",
        "tests/test_child_scope.py::test_cancellation_stops_every_child",
        "tests/test_child_scope.py::test_leaving_with_a_timeout_stops_the_stragglers",
        "tests/test_open_process.py::test_killed_by_signal_gives_minus_n",
        "tests/test_shutdown.py::test_deliver_cancel_replaces_the_default",
    ]
    command = [
        sys.executable,
        "-X",
        "dev",
        "-W",
        "error",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    done = subprocess.run(
        [sys.executable, str(WRAPPER), *command, *selected],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert " failed" not in done.stdout
