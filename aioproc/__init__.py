"""aioproc: processes for async Python, on asyncio, uvloop and trio.

* :func:`open_process` starts a command with pipes you ``await``, and stops it
  (SIGTERM, grace, SIGKILL, to its process group when asked) if you leave early;
* :func:`run_process` runs one to completion and captures its output;
* :func:`detach` starts a command that outlives us, and returns its pid;
* :class:`ChildScope` owns children you start and do not await;
* :func:`fork` and :func:`fork_call` run a Python callable in an ``os.fork()``
  child and bring its result back, with a message channel both ways;
* :class:`ForkPool` runs callables in warm forked workers, and replaces a worker
  that dies;
* :func:`pipeline` and :func:`run_pipeline` run ``a | b | c`` over kernel
  pipes, with bash's exit-status rules and one stop for every stage;
* ``open_process(cmd, pty=True)`` runs a child on a terminal of its own, and
  :func:`expect` waits for a pattern in its output;
* :mod:`aioproc.ssh` runs all of this on other hosts, over OpenSSH.

The first two accept what anyio's functions of the same names accept. One child
watcher per process reaps exactly the children aioproc started: through a
pidfd on Linux, with no thread per child.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - exercised by a subprocess test
    raise ImportError("aioproc supports POSIX systems (Linux, macOS); Windows is not supported yet")

from subprocess import DEVNULL, PIPE, STDOUT

from . import ssh
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
from ._pipeline import (
    CompletedPipeline,
    Pipeline,
    PipelineError,
    PipelineOpener,
    Stage,
    pipeline,
    run_pipeline,
)
from ._spawn import (
    EOF,
    ExpectMatch,
    ExpectTimeout,
    PipeReceiveStream,
    PipeSendStream,
    Process,
    ProcessOpener,
    Pty,
    Terminal,
    UnexpectedEOF,
    exact,
    expect,
    open_process,
    run_process,
)
from ._unattended import ChildScope, DetachedProcess, detach
from ._version import __version__ as __version__
from ._watcher import mechanism as child_watcher

__all__ = [
    "DEVNULL",
    "EOF",
    "PIPE",
    "STDOUT",
    "ChildDied",
    "ChildScope",
    "CompletedPipeline",
    "DetachedProcess",
    "ExpectMatch",
    "ExpectTimeout",
    "ForkOpener",
    "ForkPool",
    "ForkedProcess",
    "ParentChannel",
    "PipeReceiveStream",
    "PipeSendStream",
    "Pipeline",
    "PipelineError",
    "PipelineOpener",
    "PoolBroken",
    "Process",
    "ProcessOpener",
    "Pty",
    "Stage",
    "Terminal",
    "UnexpectedEOF",
    "child_watcher",
    "detach",
    "exact",
    "expect",
    "fork",
    "fork_call",
    "open_process",
    "parent_channel",
    "pipeline",
    "run_pipeline",
    "run_process",
    "ssh",
]
