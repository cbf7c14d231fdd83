"""Run the suite: every run in a fresh interpreter, in shuffled rounds, then the statistics.

For each case of each measurement, a round runs every implementation once, in
an order shuffled anew for each round, each in its own ``python -m
benchmarks._worker`` (under ``taskset -c 0`` for the pinned cases). A row's
value is the median over the rounds, with the minimum and maximum; its ratio
is the median over the rounds of (its value / the reference's value in the
same round), because on a noisy machine runs taken close together compare
well while runs taken minutes apart do not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ._core import Case, Impl, Measurement, Mode
from ._results import MEASUREMENTS, CaseResult, MeasurementResult, Row, Run, Stat

__all__ = ["main"]

ROUNDS: dict[Mode, int] = {"full": 3, "quick": 2, "smoke": 1}
TIMEOUT: dict[Mode, float] = {"full": 900.0, "quick": 120.0, "smoke": 60.0}
ROOT = Path(__file__).resolve().parent.parent


class Progress:
    """One line per run on stderr; rewritten in place when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:5.0f}s {self.done + 1}/{self.total}] {text}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r\033[K" + line[:width])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        self.note(f"done: {self.done} runs in {time.monotonic() - self.start:.0f}s")


def load(name: str) -> Measurement:
    measurement: Measurement = importlib.import_module(f"benchmarks.{name}").MEASUREMENT
    return measurement


def missing_feature(measurement: Measurement) -> str | None:
    """Why the aioproc rows of ``measurement`` cannot run, or None if they can."""
    if measurement.requires is None:
        return None
    import aioproc

    if hasattr(aioproc, measurement.requires):
        return None
    return f"not available in this aioproc (no aioproc.{measurement.requires})"


def run_worker(measurement: Measurement, case: Case, impl: Impl, timeout: float) -> Run:
    """Run one implementation on one case in a fresh interpreter."""
    prefix = ["taskset", "-c", "0"] if case.pinned else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="aioproc-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [
            *prefix,
            sys.executable,
            "-m",
            "benchmarks._worker",
            measurement.name,
            impl.name,
            json.dumps(case.params),
            str(out),
        ]
        start = time.monotonic()
        # Its own session, so that a timeout can kill whatever the run started too.
        worker = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            _, stderr_bytes = worker.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the worker unwinds and stops what left its session
            # (a daemonized sshd), and says where it was; then SIGKILL the rest.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            _, stderr_bytes = worker.communicate()  # all of it, what came before included
            stderr = stderr_bytes.decode(errors="replace")
            return Run(None, f"timed out after {timeout:g} s", stderr, time.monotonic() - start)
        seconds = time.monotonic() - start
        stderr = stderr_bytes.decode(errors="replace")
        if worker.returncode != 0 or not out.exists():
            lines = [line for line in stderr.splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"exit status {worker.returncode}"
            return Run(None, reason, stderr, seconds)
        return Run(json.loads(out.read_text()), None, stderr, seconds)


def summarize(measurement: Measurement, rows: list[Row]) -> None:
    """Fill in each row's statistics: median, min, max, and the same-round ratio."""
    reference = next((row for row in rows if row.impl == measurement.reference), None)
    for row in rows:
        for metric in measurement.metrics:
            values = [run.values[metric.key] for run in row.runs if run.values is not None]
            if not values:
                continue
            ratios = []
            if metric.ratio and reference is not None:
                for mine, theirs in zip(row.runs, reference.runs, strict=True):
                    if mine.values is not None and theirs.values is not None:
                        base = theirs.values[metric.key]
                        if base:
                            ratios.append(mine.values[metric.key] / base)
            row.stats[metric.key] = Stat(
                statistics.median(values),
                min(values),
                max(values),
                statistics.median(ratios) if ratios else None,
            )


def plan(measurement: Measurement, requested: bool, smoke: bool) -> tuple[str | None, str | None]:
    """Return (why the whole measurement is skipped, why its aioproc rows are)."""
    missing = missing_feature(measurement)
    if missing is None:
        return None, None
    if requested or smoke:
        # The other rows still run: asked for by name, or in smoke mode, which
        # must prove that every script still works.
        return None, missing
    return f"{missing}: skipped (name it with --only to measure the other rows)", missing


def select_impls(measurement: Measurement, patterns: list[str] | None) -> list[Impl]:
    if not patterns:
        return list(measurement.impls)
    return [
        impl
        for impl in measurement.impls
        if impl == measurement.reference or any(p in impl.name for p in patterns)
    ]


@dataclass
class Planned:
    """One measurement as this invocation will run it."""

    result: MeasurementResult
    cases: list[Case]
    impls: list[Impl]
    missing: str | None
    """Why the aioproc rows cannot run (the feature is not in this aioproc), if so."""

    @property
    def runnable(self) -> list[Impl]:
        return [impl for impl in self.impls if not (self.missing and impl.is_aioproc)]


@dataclass
class Suite:
    rounds: int
    timeout: float
    jobs: int
    shuffle: random.Random
    progress: Progress = field(init=False)

    def run(self, planned: list[Planned]) -> None:
        total = sum(len(p.cases) * self.rounds * len(p.runnable) for p in planned)
        self.progress = Progress(total)
        for plan in planned:
            if plan.result.skipped:
                self.progress.note(f"{plan.result.measurement.name}: {plan.result.skipped}")
                continue
            for index, case in enumerate(plan.cases, 1):
                label = f"{plan.result.measurement.name} ({index}/{len(plan.cases)}: {case.label})"
                plan.result.cases.append(self.run_case(plan, case, label))
        self.progress.finish()

    def run_case(self, plan: Planned, case: Case, label: str) -> CaseResult:
        measurement = plan.result.measurement
        rows = [Row(impl, unavailable=plan.missing) for impl in plan.impls]
        runs_of = {row.impl: row for row in rows if row.impl in plan.runnable}
        for row in runs_of.values():
            row.unavailable = None
        tasks = []
        for round_number in range(1, self.rounds + 1):
            order = list(runs_of)
            self.shuffle.shuffle(order)
            tasks += [(round_number, impl) for impl in order]

        def one(task: tuple[int, Impl]) -> Run:
            round_number, impl = task
            self.progress.show(f"{label} · round {round_number}/{self.rounds} · {impl.name}")
            run = run_worker(measurement, case, impl, self.timeout)
            if run.error:
                self.progress.note(f"  {impl.name} failed: {run.error}")
            self.progress.done += 1
            return run

        # Smoke runs only prove that the scripts work and their timings mean nothing,
        # so they may overlap (jobs > 1). Every other run has the machine to itself.
        with ThreadPoolExecutor(self.jobs) as pool:
            for (_, impl), run in zip(tasks, pool.map(one, tasks), strict=True):
                runs_of[impl].runs.append(run)
        summarize(measurement, rows)
        return CaseResult(case, rows)


def run_suite(args: argparse.Namespace) -> list[MeasurementResult]:
    mode: Mode = args.mode
    have_taskset = shutil.which("taskset") is not None
    planned = []
    for name in [name for name in MEASUREMENTS if not args.only or name in args.only]:
        measurement = load(name)
        skipped, missing = plan(measurement, bool(args.only), args.smoke)
        cases = [] if skipped else measurement.cases(mode)
        if not have_taskset and any(case.pinned for case in cases):
            print(f"{name}: taskset not found, pinned cases left out", file=sys.stderr)
            cases = [case for case in cases if not case.pinned]
        result = MeasurementResult(measurement, skipped=skipped, caption=measurement.title)
        planned.append(Planned(result, cases, select_impls(measurement, args.impls), missing))
    suite = Suite(
        rounds=args.rounds_used,
        timeout=TIMEOUT[mode],
        jobs=(os.cpu_count() or 1) if mode == "smoke" else 1,
        shuffle=random.Random(args.seed),
    )
    suite.run(planned)
    return [p.result for p in planned]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark aioproc against asyncio, uvloop, trio, anyio and the blocking "
        "stdlib. Markdown on stdout, progress on stderr, JSON and PNG in --out.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, 2 rounds (minutes: see benchmarks/README.md)",
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes, 1 round: proves the scripts run"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=MEASUREMENTS,
        metavar="NAME",
        help=f"run only these measurements ({', '.join(MEASUREMENTS)})",
    )
    parser.add_argument(
        "--impl",
        dest="impls",
        nargs="+",
        metavar="TEXT",
        help="keep only the implementations whose name contains one of these (and the reference)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per case (default: 3, quick 2, smoke 1)")
    parser.add_argument("--seed", type=int, help="seed of the shuffles (default: random)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="directory for the JSON, markdown and PNG files (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.rounds_used = args.rounds or ROUNDS[args.mode]
    return args


def _byte_compile_aioproc() -> None:
    """Byte-compile the aioproc measured, as pip does when it installs a package.

    An editable checkout has no ``.pyc`` files until Python writes them, and it
    never does under ``PYTHONDONTWRITEBYTECODE``: every worker would then compile
    each module aioproc imports lazily (the child watcher's, for one) inside the
    timing of its first use, which no installed aioproc does.
    """
    import compileall

    import aioproc

    compileall.compile_dir(os.path.dirname(aioproc.__file__), quiet=1)


def main(argv: list[str]) -> int:
    from . import _report

    args = parse_args(argv)
    _byte_compile_aioproc()
    machine = _report.machine()
    results = run_suite(args)
    machine["load_average_end"] = list(os.getloadavg())
    _report.emit(results, machine, args)
    return 0
