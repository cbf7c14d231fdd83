"""``python -m benchmarks``: run the suite (``--help`` for the options)."""

from __future__ import annotations

import sys

from ._runner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
