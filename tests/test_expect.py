"""expect(): patterns (regex, exact, EOF), read-ahead kept, timeouts and EOF that lose nothing."""

from __future__ import annotations

import re

import anyio
import pytest

import aioproc

from .cancel_sweep import Sweep
from .helpers import py


async def test_regex_patterns_and_what_comes_before_and_after() -> None:
    async with aioproc.open_process(["printf", "login: ok\\nuser 42 logged in\\n$ "]) as child:
        assert child.stdout is not None
        found = await aioproc.expect(child.stdout, [rb"user (\d+)", rb"\$ "], timeout=30)
        assert found.index == 0
        assert found.before == b"login: ok\n"
        assert found.after == b"user 42"
        assert found.group(1) == b"42"
        assert found.match is not None
        assert found.pattern == re.compile(rb"user (\d+)")
        found = await aioproc.expect(child.stdout, rb"\$ ", timeout=30)  # one pattern alone
        assert (found.index, found.before, found.after) == (0, b" logged in\n", b"$ ")


async def test_exact_matches_literally() -> None:
    async with aioproc.open_process(["printf", "a.b (x) $ [y]"]) as child:
        assert child.stdout is not None
        found = await aioproc.expect(child.stdout, aioproc.exact(b"(x) $ "), timeout=30)
        assert found.before == b"a.b "
        assert await child.stdout.read_all() == b"[y]"


async def test_the_earliest_match_wins_then_the_first_listed() -> None:
    async with aioproc.open_process(["printf", "xx bb aa"]) as child:
        assert child.stdout is not None
        found = await aioproc.expect(child.stdout, [b"aa", b"bb", b"b"], timeout=30)
        assert (found.index, found.after) == (1, b"bb")


async def test_read_ahead_is_kept_for_the_next_read(engine: str) -> None:
    async with aioproc.open_process(["printf", "one\\ntwo\\nthree\\n"], engine=engine) as child:
        assert child.stdout is not None
        found = await aioproc.expect(child.stdout, b"two", timeout=30)
        assert found.before == b"one\n"
        assert [line async for line in child.stdout.lines()] == [b"\n", b"three\n"]


async def test_eof_as_a_pattern() -> None:
    async with aioproc.open_process(["printf", "bye"], pty=True) as child:
        assert child.stdout is not None
        found = await aioproc.expect(child.stdout, [b"never", aioproc.EOF], timeout=30)
        assert (found.index, found.pattern, found.match) == (1, aioproc.EOF, None)
        assert (found.before, found.after, found.group()) == (b"bye", b"", b"")
        assert repr(aioproc.EOF) == "aioproc.EOF"


async def test_unexpected_eof_carries_what_was_read_and_leaves_it() -> None:
    async with aioproc.open_process(["printf", "partial output"], pty=True) as child:
        assert child.stdout is not None
        with pytest.raises(aioproc.UnexpectedEOF) as caught:
            await aioproc.expect(child.stdout, b"prompt> ", timeout=30)
        assert caught.value.before == b"partial output"
        assert isinstance(caught.value, EOFError)
        assert await child.stdout.read_all() == b"partial output"


async def test_timeout_carries_what_was_read_and_leaves_it() -> None:
    script = "echo started; exec sleep 60"
    async with aioproc.open_process(["sh", "-c", script], pty=True, grace=0.05) as child:
        assert child.stdout is not None
        await aioproc.expect(child.stdout, b"start", timeout=30)
        with pytest.raises(aioproc.ExpectTimeout) as caught:
            await aioproc.expect(child.stdout, [b"never", b"nor this"], timeout=0.1)
        assert caught.value.before == b"ed\r\n"
        assert isinstance(caught.value, TimeoutError)
        assert "never" in str(caught.value)
        assert caught.value.patterns == [re.compile(b"never"), re.compile(b"nor this")]
        found = await aioproc.expect(child.stdout, b"\n", timeout=30)
        assert found.before == b"ed\r"
        child.kill()


async def test_a_cancelled_expect_loses_no_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cancel expect() (and the task typing its answers) at their 1st, 2nd, ... await:
    # what expect() consumed and what is left to read make up the whole output.
    sweep = Sweep()
    sweep.install(monkeypatch)
    never = 1 << 30
    script = "printf abc; read x; printf def; read y; printf ghijkl"
    target = 0
    while True:
        target += 1
        async with aioproc.open_process(["sh", "-c", script], pty=aioproc.Pty(echo=False)) as child:
            assert child.stdout is not None
            stdin = child.stdin
            assert stdin is not None
            found = None

            async def answer(stdin: aioproc.PipeSendStream) -> None:
                for _ in range(2):
                    await stdin.send(b"\n")

            with anyio.CancelScope() as scope:
                sweep.scope, sweep.reached, sweep.target = scope, 0, target
                async with anyio.create_task_group() as tg:
                    tg.start_soon(answer, stdin)
                    found = await aioproc.expect(child.stdout, b"ghi")
            sweep.scope, sweep.target = None, never
            await stdin.send(b"\n\n")  # whatever answer() did not get to type
            consumed = b"" if found is None else found.before + found.after
            assert consumed + await child.stdout.read_all() == b"abcdefghijkl"
        if not scope.cancelled_caught:
            break
    # expect() has to wait at least once: answer() runs only once it does.
    assert target >= 2


PROMPTER = """
while True:
    line = input("> ")
    if line == "quit":
        break
    print("echo:", line)
"""


async def test_many_prompt_and_answer_rounds() -> None:
    async with aioproc.open_process(py(PROMPTER), pty=aioproc.Pty(echo=False)) as child:
        assert child.stdout is not None
        await aioproc.expect(child.stdout, b"> ", timeout=30)
        for i in range(200):
            await child.stdin.send(b"%d\n" % i)  # type: ignore[union-attr]
            found = await aioproc.expect(child.stdout, b"> ", timeout=30)
            assert found.before == b"echo: %d\r\n" % i
        await child.stdin.send(b"quit\n")  # type: ignore[union-attr]
        assert await aioproc.expect(child.stdout, aioproc.EOF, timeout=30)
        assert await child.wait() == 0


async def test_bad_input() -> None:
    async with aioproc.open_process(["printf", "x"]) as child:
        assert child.stdout is not None
        with pytest.raises(TypeError, match=r"not BytesIO"):
            import io

            await aioproc.expect(io.BytesIO(b"x"), b"x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"not str: 'x'"):
            await aioproc.expect(child.stdout, "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"pattern 1 must be bytes.*not str: 'y' \(the output"):
            await aioproc.expect(child.stdout, [b"x", "y"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match=r"a str pattern: compile a bytes one"):
            await aioproc.expect(child.stdout, [re.compile("x")])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="patterns is empty"):
            await aioproc.expect(child.stdout, [])
        with pytest.raises(ValueError, match=r"timeout must be >= 0 seconds, not -1"):
            await aioproc.expect(child.stdout, b"x", timeout=-1)
        with pytest.raises(
            TypeError, match=r"timeout must be a number of seconds or None, not '1'"
        ):
            await aioproc.expect(child.stdout, b"x", timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"exact\(\) takes bytes, not str"):
            aioproc.exact("x")  # type: ignore[arg-type]
        assert await child.stdout.read_all() == b"x"  # nothing was consumed
