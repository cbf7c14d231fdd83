"""What a run leaves behind: markdown tables on stdout, and JSON, markdown and PNG files."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from ._results import MEASUREMENTS, MeasurementResult, Row

__all__ = ["emit", "machine", "markdown"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _child_watcher() -> str:
    import aioproc

    forced = os.environ.get("AIOPROC_CHILD_WATCHER")
    try:
        name = str(aioproc.child_watcher())
    except Exception as exc:  # reported, not fatal: the runs will fail and say why
        name = f"unusable ({exc})"
    return f"{name} (forced by AIOPROC_CHILD_WATCHER={forced})" if forced else name


def machine() -> dict[str, Any]:
    """The machine and the software measured, recorded with every result."""
    import aioproc

    source = Path(aioproc.__file__).resolve().parent

    def git(*args: str) -> str:
        command = ["git", "-C", str(source), *args]
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()

    # The last commit that changed aioproc's own files, and whether they have changed since.
    commit = git("log", "-1", "--format=%h", "--", ".")
    if commit and git("status", "--porcelain", "--", "."):
        commit += " + uncommitted changes"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "system": platform.system(),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "versions": {name: _version(name) for name in ("aioproc", "anyio", "trio", "uvloop")},
        "aioproc_source": str(source),
        "aioproc_commit": commit or None,
        "child_watcher": _child_watcher(),
        "load_average_start": list(os.getloadavg()),
    }


def _cell(fmt: str, value: float | None) -> str:
    return "" if value is None else fmt.format(value)


def _row_cells(result: MeasurementResult, row: Row) -> list[str]:
    measurement = result.measurement
    label = row.impl.name
    if row.impl == measurement.reference:
        label = f"**{label}** (ref)"
    failures = row.failures
    if failures and len(failures) < len(row.runs):
        label += f" ({len(failures)}/{len(row.runs)} runs failed)"
    cells = [label]
    if row.unavailable or not row.stats:
        why = row.unavailable or (f"failed: {failures[0].error}" if failures else "no result")
        return cells + [why.replace("|", "/")] + [""] * (_width(result) - 2)
    for metric in measurement.metrics:
        stat = row.stats.get(metric.key)
        cells.append(_cell(metric.fmt, stat.median if stat else None))
        if metric.spread:
            cells.append(
                f"{metric.fmt.format(stat.min)}-{metric.fmt.format(stat.max)}" if stat else ""
            )
        if metric.ratio:
            cells.append(_cell("{:.2f}x", stat.ratio if stat else None))
    return cells


def _header(result: MeasurementResult) -> list[str]:
    cells = ["implementation"]
    for metric in result.measurement.metrics:
        cells.append(metric.label)
        if metric.spread:
            cells.append("min-max")
        if metric.ratio:
            better = "higher" if metric.higher_is_better else "lower"
            cells.append(f"ratio ({better} is better)")
    return cells


def _width(result: MeasurementResult) -> int:
    return len(_header(result))


def markdown(
    results: list[MeasurementResult], info: dict[str, Any], args: argparse.Namespace
) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    lines = [
        f"# aioproc benchmarks ({args.mode})",
        "",
        f"{info['date']} · {info['system']} {info['kernel']} · {info['cpu_count']} CPUs "
        f"({info['cpu_model']}) · {info['python']} · {versions} · aioproc from "
        f"{info['aioproc_source']} (commit {info['aioproc_commit']}), child watcher "
        f"{info['child_watcher']} · load average {info['load_average_start'][0]:.2f} at the "
        f"start, {info['load_average_end'][0]:.2f} at the end",
        "",
        f"Every run is a fresh interpreter; {args.rounds_used} round(s) per case, implementations "
        f"in a new random order each round (seed {args.seed}). Values are medians over the "
        "rounds, with min-max; the ratio is the median over the rounds of the ratio to the "
        "reference row measured in the same round.",
    ]
    for result in results:
        measurement = result.measurement
        number = MEASUREMENTS.index(measurement.name) + 1
        lines += ["", f"## {number}. {measurement.title}", ""]
        if result.skipped:
            lines.append(f"*{measurement.name}: {result.skipped}.*")
            continue
        lines.append(" ".join([f"Reference: {measurement.reference.name}.", *measurement.notes]))
        for case_result in result.cases:
            header = _header(result)
            pinned = "  (taskset -c 0)" if case_result.case.pinned else ""
            lines += ["", f"### {case_result.case.label}{pinned}", ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|---" + "|--:" * (len(header) - 1) + "|")
            for row in case_result.rows:
                lines.append("| " + " | ".join(_row_cells(result, row)) + " |")
            errors = {
                f"{row.impl.name}: {run.error}" for row in case_result.rows for run in row.failures
            }
            lines += [f"- failed: {error}" for error in sorted(errors)]
            # A run that worked but wrote to stderr (a warning, say) is worth a look too.
            said = {
                f"{row.impl.name}: {run.stderr.strip().splitlines()[-1]}"
                for row in case_result.rows
                for run in row.runs
                if run.values is not None and run.stderr.strip()
            }
            lines += [f"- stderr of {line}" for line in sorted(said)]
    return "\n".join(lines) + "\n"


def _as_json(
    results: list[MeasurementResult], info: dict[str, Any], args: argparse.Namespace
) -> Any:
    def row(row: Row) -> dict[str, Any]:
        return {
            "implementation": row.impl.name,
            "reference": False,
            "unavailable": row.unavailable,
            "stats": {key: asdict(stat) for key, stat in row.stats.items()},
            "runs": [
                {"values": run.values, "error": run.error, "seconds": round(run.seconds, 3)}
                | ({"stderr": run.stderr[-4000:]} if run.stderr else {})
                for run in row.runs
            ],
        }

    measurements = []
    for result in results:
        measurement = result.measurement
        cases = []
        for case_result in result.cases:
            rows = [row(r) for r in case_result.rows]
            for entry, r in zip(rows, case_result.rows, strict=True):
                entry["reference"] = r.impl == measurement.reference
            cases.append(
                {
                    "case": case_result.case.label,
                    "params": case_result.case.params,
                    "pinned": case_result.case.pinned,
                    "rows": rows,
                }
            )
        measurements.append(
            {
                "name": measurement.name,
                "title": measurement.title,
                "reference": measurement.reference.name,
                "metrics": [asdict(metric) for metric in measurement.metrics],
                "skipped": result.skipped,
                "cases": cases,
            }
        )
    return {
        "machine": info,
        "mode": args.mode,
        "rounds": args.rounds_used,
        "seed": args.seed,
        "argv": sys.argv,
        "measurements": measurements,
    }


def emit(results: list[MeasurementResult], info: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the tables, and write them with the JSON and the plots into ``args.out``."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.mode}-py{sys.version_info[0]}.{sys.version_info[1]}"
    notes = []
    for result in results:
        plot = result.measurement.plot
        if plot is None or not result.cases:
            continue
        path = out / f"{result.measurement.name}-{stem}.png"
        try:
            plot(result, path)
        except ImportError as exc:
            notes.append(f"plot skipped, {exc.name} is missing: pip install -e '.[bench]'")
        else:
            notes.append(f"plot: {path}")
    text = markdown(results, info, args)
    (out / f"results-{stem}.md").write_text(text)
    json_path = out / f"results-{stem}.json"
    json_path.write_text(json.dumps(_as_json(results, info, args), indent=1) + "\n")
    sys.stdout.write(text)
    sys.stdout.flush()
    for note in [*notes, f"results: {json_path}"]:
        print(note, file=sys.stderr)
