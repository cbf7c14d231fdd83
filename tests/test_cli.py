"""``python -m aioproc``: its help, ``--version``, and ``aioproc.__version__``.

The ``detach`` subcommand is tested with ``detach`` itself, in ``test_detach.py``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import pytest

import aioproc
from aioproc import _version


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aioproc", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_help_explains_the_backend_argument_and_the_detach_subcommand() -> None:
    done = _cli("--help")
    assert (done.returncode, done.stderr) == (0, "")
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal's width
    assert text.startswith("usage: python -m aioproc [-h] [--version] [{asyncio,trio}]")
    assert "{asyncio,trio} the event loop library to run the demo on (default: asyncio)" in text
    assert "pip install 'aioproc[trio]'" in text
    assert "python -m aioproc detach [options] -- cmd args..." in text
    assert "python -m aioproc detach --help" in text


def test_detach_help_states_the_exit_statuses() -> None:
    done = _cli("detach", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert text.startswith("usage: python -m aioproc detach")
    assert "127 if the program is not found, 126 if it cannot be executed, 125" in text


def test_version() -> None:
    done = _cli("--version")
    assert (done.returncode, done.stderr) == (0, "")
    python = sys.version.split()[0]
    assert done.stdout == f"aioproc {aioproc.__version__} (Python {python})\n"


def test_dunder_version_is_the_installed_distributions() -> None:
    assert aioproc.__version__ == importlib.metadata.version("aioproc")
    assert "__version__" not in aioproc.__all__  # a module attribute, as in trio and numpy


def test_dunder_version_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        assert importlib.reload(_version).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(_version)
    assert _version.__version__ == aioproc.__version__


def test_a_missing_trio_is_named_with_the_extra_to_install() -> None:
    # A child where trio cannot be imported, as on an install without the extra.
    code = (
        "import sys, runpy; sys.modules['trio'] = None; sys.argv = ['aioproc', 'trio']; "
        "runpy.run_module('aioproc', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "trio is not installed: pip install 'aioproc[trio]'" in done.stderr
