"""Fire and forget: children nobody talks to.

* ``_detach``: ``detach``, a command that is not our child and outlives us
  (a double fork, reaped before it returns);
* ``_child_scope``: ``ChildScope``, children started and reaped by a block
  that owns them, stopped when it is left early.

``die_with_parent``, the opposite of detaching, is an option of every spawn
(``_spawn._request``). This wing stands on the spawn wing and the ground floor.
"""

from __future__ import annotations

from ._child_scope import ChildScope
from ._detach import DetachedProcess, detach

__all__ = ["ChildScope", "DetachedProcess", "detach"]
