"""Every Python example of the README and the docs, run on asyncio and on trio.

The examples are found and run by pytest-examples (why that tool: docs/testing.md).
Each is a complete program ending in ``anyio.run(main)``; on the trio run,
``anyio.run`` is given ``backend="trio"``, and nothing else changes. Where an
example shows its output in ``#>`` comments after a ``print``, the printed output
must be exactly that; ``pytest --update-examples tests/test_docs_examples.py``
rewrites those comments from a run on asyncio, for review.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

import aioproc

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
# docs/ssh.md needs an ssh server: tests/test_docs_ssh.py runs it against the test sshd.
EXAMPLES = [
    example
    for example in find_examples(ROOT / "README.md", DOCS)
    if example.path != DOCS / "ssh.md"
]


def example_id(example: CodeExample) -> str:
    return f"{example.path.relative_to(ROOT)}:{example.start_line}"


# The trio test runner and earlier tests may leave idle worker threads, which a
# fork warns about (see the fork safety rules): the advice of docs/how-it-works.md.
@pytest.mark.filterwarnings(r"ignore:aioproc\.(fork\(\)|ForkPool).* other thread:RuntimeWarning")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_example(
    example: CodeExample,
    backend: str,
    eval_example: EvalExample,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_run: Callable[..., Any] = anyio.run

    def run_on_backend(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("backend", backend)
        return real_run(func, *args, **kwargs)

    monkeypatch.setattr(anyio, "run", run_on_backend)
    # pytest-examples runs the example as __main__; put ours back afterwards.
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    eval_example.set_config(line_length=100)
    if "anyio.run(main" not in example.source:
        pytest.fail(f"{example_id(example)}: not a complete program ending in anyio.run(main)")
    if eval_example.update_examples:
        if backend == "asyncio":
            eval_example.run_print_update(example)
    elif "#>" in example.source:
        eval_example.run_print_check(example)
    else:
        eval_example.run(example)


def test_there_are_examples_on_every_tutorial_page() -> None:
    pages = {example.path for example in EXAMPLES}
    for page in sorted((DOCS / "tutorial").glob("*.md")):
        assert page in pages, f"{page.relative_to(ROOT)} has no Python example"
    assert ROOT / "README.md" in pages


def test_api_page_lists_all() -> None:
    """docs/api.md documents every name of ``aioproc.__all__`` and ``aioproc.ssh.__all__``, and nothing else."""
    text = (DOCS / "api.md").read_text()
    directive = r"^\.\. (?:auto\w+|py:\w+):: (?:aioproc\.)?([\w.]+)"
    listed = re.findall(directive, text, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a name is listed twice in docs/api.md"
    public = set(aioproc.__all__) | {f"ssh.{name}" for name in aioproc.ssh.__all__}
    assert public - set(listed) == set(), "public names missing from docs/api.md"
    assert set(listed) - public == set(), "docs/api.md lists names not in __all__"


def test_readme_is_a_landing_page() -> None:
    """At most 150 lines, and its test command is the one CI runs."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    command = "python -X dev -W error -m pytest -n auto"
    assert f"python -m pip install -e '.[test]' && {command}\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"AIOPROC_CHILD_WATCHER=$watcher {command} -q\n" in ci, "README and .ci/run differ"
