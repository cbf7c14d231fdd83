"""The results of a benchmark run: filled by the runner, printed by the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._core import Case, Impl, Measurement

__all__ = ["MEASUREMENTS", "CaseResult", "MeasurementResult", "Row", "Run", "Stat"]

MEASUREMENTS = (
    "spawn",
    "concurrency",
    "throughput",
    "roundtrip",
    "fork",
    "detach",
    "pipeline",
    "pty",
    "capture",
    "ssh",
    "pool",
)


@dataclass
class Run:
    """What one worker reported: its metrics, or why it has none."""

    values: dict[str, float] | None
    error: str | None = None
    stderr: str = ""
    seconds: float = 0.0


@dataclass
class Stat:
    median: float
    min: float
    max: float
    ratio: float | None


@dataclass
class Row:
    impl: Impl
    runs: list[Run] = field(default_factory=list)
    unavailable: str | None = None
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def failures(self) -> list[Run]:
        return [run for run in self.runs if run.values is None]


@dataclass
class CaseResult:
    case: Case
    rows: list[Row]


@dataclass
class MeasurementResult:
    measurement: Measurement
    cases: list[CaseResult] = field(default_factory=list)
    skipped: str | None = None
    caption: str = ""

    def impl_names(self) -> list[str]:
        return [impl.name for impl in self.measurement.impls]

    def curve(
        self, name: str, param: str, keys: tuple[str, ...]
    ) -> list[tuple[Any, dict[str, float]]]:
        """(case parameter, medians) for one row over every case where it has numbers."""
        points = []
        for case_result in self.cases:
            for row in case_result.rows:
                if row.impl.name == name and all(key in row.stats for key in keys):
                    medians = {key: row.stats[key].median for key in keys}
                    points.append((case_result.case.params[param], medians))
        return points
