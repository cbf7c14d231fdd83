"""Fork: run a Python callable in an ``os.fork()`` child and bring its result back.

* ``_fork``: ``fork`` and ``fork_call``, and the parent's side of a child
  (:class:`ForkedProcess`, a :class:`Process` of the spawn wing plus a result);
* ``_child``: what runs in the child, from the fork to ``os._exit``;
* ``_channel``: the message frames, and the channel both ways;
* ``_pool``: :class:`ForkPool`, warm workers forked from a template process.

It stands on the spawn wing (the process, its streams, its stop sequence) and
on the ground floor (the child watcher, the backends).
"""

from __future__ import annotations

from ._channel import ParentChannel, parent_channel
from ._fork import ChildDied, ForkedProcess, ForkOpener, fork, fork_call
from ._pool import ForkPool, PoolBroken

__all__ = [
    "ChildDied",
    "ForkOpener",
    "ForkPool",
    "ForkedProcess",
    "ParentChannel",
    "PoolBroken",
    "fork",
    "fork_call",
    "parent_channel",
]
