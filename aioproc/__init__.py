"""aioproc: processes for async Python, on asyncio, uvloop and trio.

* :func:`open_process` starts a command with pipes you ``await``, and stops it
  (SIGTERM, grace, SIGKILL, to its process group when asked) if you leave early;
* :func:`run_process` runs one to completion and captures its output;
* :func:`detach` starts a command that outlives us, and returns its pid;
* :class:`ChildScope` owns children you start and do not await;
* :func:`fork` and :func:`fork_call` run a Python callable in an ``os.fork()``
  child and bring its result back, with a message channel both ways;
* :class:`ForkPool` runs callables in warm forked workers, and replaces a worker that dies.

The first two accept what anyio's functions of the same names accept. One child
watcher per process reaps exactly the children aioproc started: through a
pidfd on Linux, with no thread per child.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - exercised by a subprocess test
    raise ImportError("aioproc supports POSIX systems (Linux, macOS); Windows is not supported yet")

from subprocess import DEVNULL, PIPE, STDOUT

from ._fork import (
    ChildDied,
    ForkedProcess,
    ForkOpener,
    ForkPool,
    ParentChannel,
    PoolBroken,
    fork,
    fork_call,
    parent_channel,
)
from ._spawn import (
    PipeReceiveStream,
    PipeSendStream,
    Process,
    ProcessOpener,
    open_process,
    run_process,
)
from ._unattended import ChildScope, DetachedProcess, detach
from ._watcher import mechanism as child_watcher

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "ChildDied",
    "ChildScope",
    "DetachedProcess",
    "ForkOpener",
    "ForkPool",
    "ForkedProcess",
    "ParentChannel",
    "PipeReceiveStream",
    "PipeSendStream",
    "PoolBroken",
    "Process",
    "ProcessOpener",
    "child_watcher",
    "detach",
    "fork",
    "fork_call",
    "open_process",
    "parent_channel",
    "run_process",
]
