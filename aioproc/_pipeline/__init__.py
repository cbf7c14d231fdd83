"""Pipelines: ``a | b | c`` wired by the kernel, with bash's exit-status rules.

* ``_stage``: :class:`Stage`, one command of a pipeline and its own options,
  and how one stage is started (the point where a remote stage would differ);
* ``_pipeline``: ``pipeline``, the :class:`Pipeline` (its stages as processes,
  its ends as streams, the exit status, one stop for the whole group);
* ``_run_pipeline``: ``run_pipeline``, :class:`CompletedPipeline` and
  :class:`PipelineError`.

The stages are joined by kernel pipes that the parent only creates and closes:
it never reads or writes them. Each stage is a :class:`Process` of the spawn
wing (its request checks, its spawn, its streams and child watcher), and stage 0
leads the process group the others join. That wing and the ground floor are all
this one stands on.
"""

from __future__ import annotations

from ._pipeline import Pipeline, PipelineOpener, pipeline
from ._run_pipeline import CompletedPipeline, PipelineError, run_pipeline
from ._stage import Stage

__all__ = [
    "CompletedPipeline",
    "Pipeline",
    "PipelineError",
    "PipelineOpener",
    "Stage",
    "pipeline",
    "run_pipeline",
]
