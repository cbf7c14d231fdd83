"""Spawn and talk: start a program, talk to it through anyio streams, stop it, reap it.

This wing is ``open_process`` and ``run_process``, read top-down:

* ``_open_process`` and ``_run_process``: the public functions, as anyio's;
* ``_process``: the public :class:`Process` and the policy every engine shares
  (``wait``, ``aclose``, the stop sequence: stdin closed, SIGTERM, grace, SIGKILL);
* ``_native`` (the default engine: our own pipes, exits from the child watcher)
  and ``_asyncio_engine`` (asyncio's own subprocess transports);
* ``_streams``: a child's pipes as anyio byte streams;
* ``_pty`` (``pty=``: the child on a pseudo-terminal of its own) and ``_expect``
  (waiting for a pattern in a stream's output);
* ``_request``: the checks of a spawn's arguments, and the spawn itself (``Popen``).

It stands on the ground floor, ``_watcher`` and ``_backends``. The wings above
(fork, unattended children) use what this ``__init__`` names, and nothing else.
"""

from __future__ import annotations

from ._expect import EOF, ExpectMatch, ExpectTimeout, UnexpectedEOF, exact, expect
from ._native import NativeProcess, drain
from ._open_process import ENGINES, Engine, ProcessOpener, open_process
from ._process import Opener, Process, check_grace
from ._pty import Pty, Terminal
from ._request import (
    FileSpec,
    SpawnedChild,
    SpawnRequest,
    StrOrBytesPath,
    check_command,
    check_file,
    spawn,
)
from ._run_process import run_process
from ._streams import (
    FdReceiveStream,
    FdSendStream,
    PipeReceiveStream,
    PipeSendStream,
    enlarge_pipe,
)

__all__ = [
    "ENGINES",
    "EOF",
    "Engine",
    "ExpectMatch",
    "ExpectTimeout",
    "FdReceiveStream",
    "FdSendStream",
    "FileSpec",
    "NativeProcess",
    "Opener",
    "PipeReceiveStream",
    "PipeSendStream",
    "Process",
    "ProcessOpener",
    "Pty",
    "SpawnRequest",
    "SpawnedChild",
    "StrOrBytesPath",
    "Terminal",
    "UnexpectedEOF",
    "check_command",
    "check_file",
    "check_grace",
    "drain",
    "enlarge_pipe",
    "exact",
    "expect",
    "open_process",
    "run_process",
    "spawn",
]
