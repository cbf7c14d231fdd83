"""One run in a fresh interpreter: ``python -m benchmarks._worker MEASUREMENT IMPL PARAMS OUT``.

Runs one implementation on one case of one measurement and writes the metrics
it returns, as JSON, to the file OUT. Anything that goes wrong is a traceback
on stderr and a nonzero exit status, which the runner reports in the table.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import traceback
from pathlib import Path

# Absolute, not relative: anyio.to_process re-imports this file as a script in its workers.
from benchmarks._core import Measurement, by_name


def _timed_out(signum: int, frame: object) -> None:
    """The runner's timeout: say where this run was, and unwind (its finally blocks
    stop what it started outside its session, such as the ssh measurement's sshd)."""
    print("timed out; the run was at:", file=sys.stderr)
    traceback.print_stack(frame, file=sys.stderr)  # type: ignore[arg-type]
    raise SystemExit(3)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _timed_out)
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    _, name, impl_name, params, out = argv
    measurement: Measurement = importlib.import_module(f"benchmarks.{name}").MEASUREMENT
    impl = by_name(measurement.impls, impl_name)
    values = measurement.run(impl, json.loads(params))
    Path(out).write_text(json.dumps(values))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
