"""fork and fork_call: results, failures, the channel, shutdown, and the safety rules of issue 3.

Every test runs on asyncio, uvloop and trio, under the child watcher CI picks.
The functions run in the children are defined here at module level, so that
what they raise can be unpickled in the parent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio

import aioproc
from aioproc import ChildDied, parent_channel

from .helpers import PY, children_of_us, open_fds, pid_alive

# anyio's pytest plugin runs trio in guest mode, where trio polls for I/O in a
# worker thread, and trio's idle workers stay about 10 s into the next tests.
# So fork's default thread policy warns in this test process most of the time.
# The tests of that policy (test_4_*) record warnings themselves; elsewhere
# this one warning is not what is under test.
pytestmark = pytest.mark.filterwarnings(r"ignore:aioproc\.fork\(\).* other thread:RuntimeWarning")


def backend_name() -> str:
    return sniffio.current_async_library()


# -- what the children run ------------------------------------------------------------


class Oops(Exception):
    pass


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` does not take its ``args`` back."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


class LockedError(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def add(a: int, b: int = 0) -> int:
    return a + b


async def async_identity() -> tuple[str, str, int]:
    await anyio.sleep(0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)
    loop_module = ""
    if sniffio.current_async_library() == "asyncio":
        loop_module = type(asyncio.get_running_loop()).__module__
    return sniffio.current_async_library(), loop_module, os.getpid()


def raise_oops() -> None:
    raise Oops("from the child")


def echo_server() -> int:
    channel = parent_channel()
    count = 0
    for message in channel:
        channel.send(message * 2)
        count += 1
    return count


async def async_echo_server() -> int:
    channel = parent_channel()
    count = 0
    async for message in channel:
        await channel.asend(message * 2)
        count += 1
    return count


def ready_then_block() -> None:
    """Say ready, then wait for a message that never comes."""
    channel = parent_channel()
    channel.send("ready")
    channel.receive()


def ready_then_wait_for_go() -> str:
    channel = parent_channel()
    channel.send("ready")
    return str(channel.receive())


# -- results ----------------------------------------------------------------------------


async def test_fork_call_returns_the_value(anyio_backend: object) -> None:
    assert await aioproc.fork_call(add, 2, b=40) == 42


async def test_an_async_fn_runs_on_a_fresh_loop_of_the_parents_kind(anyio_backend: object) -> None:
    library, loop_module, pid = await aioproc.fork_call(async_identity)
    assert pid != os.getpid()
    assert library == backend_name()
    if anyio_backend != "asyncio" and library == "asyncio":
        assert loop_module.startswith("uvloop")
    elif library == "asyncio":
        assert loop_module.startswith("asyncio")


async def test_a_100_mb_result_comes_back(anyio_backend: object) -> None:
    result = await aioproc.fork_call(bytes, 100_000_000)
    assert len(result) == 100_000_000


async def test_waiting_reads_a_large_result_so_the_child_can_exit(anyio_backend: object) -> None:
    # The child blocks on a full pipe until someone reads: wait() must read.
    async with aioproc.fork(bytes, 10_000_000) as child:
        assert await child.wait() == 0
    assert len(await child.result()) == 10_000_000
    async with aioproc.fork(bytes, 10_000_000) as child:  # and so must communicate()
        assert await child.communicate() == (None, None)
    assert len(await child.result()) == 10_000_000


async def test_an_exception_keeps_its_type_and_the_childs_traceback(anyio_backend: object) -> None:
    with pytest.raises(Oops, match="from the child") as caught:
        await aioproc.fork_call(raise_oops)
    cause = caught.value.__cause__
    assert isinstance(cause, aioproc._fork._fork.ChildTraceback)
    assert "raise_oops" in cause.text
    assert 'raise Oops("from the child")' in cause.text


async def test_an_unpicklable_result_is_a_clear_error(anyio_backend: object) -> None:
    with pytest.raises(pickle.PicklingError, match=r"returned a _thread\.lock, which cannot be"):
        await aioproc.fork_call(threading.Lock)


@pytest.mark.parametrize("exception", [LockedError, TwoArgError])
async def test_an_exception_that_cannot_travel_is_a_clear_error(
    anyio_backend: object, exception: type[Exception]
) -> None:
    def fail() -> None:
        raise exception() if exception is LockedError else exception(1, 2)  # type: ignore[call-arg]

    name = f"tests.test_fork.{exception.__name__}"
    with pytest.raises(pickle.PicklingError, match=f"raised {name}") as caught:
        await aioproc.fork_call(fail)
    assert "in fail" in str(caught.value.__cause__)  # the original traceback still comes


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def interrupt_myself() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("fn", "args", "returncode"),
    [
        (os._exit, (3,), 3),
        (sys.exit, (4,), 4),
        (sys.exit, (-1,), 255),
        (sys.exit, (), 0),
        (kill_myself, (), -signal.SIGKILL),
        (interrupt_myself, (), -signal.SIGINT),
    ],
    ids=["os._exit", "sys.exit", "sys.exit(-1)", "sys.exit()", "SIGKILL", "KeyboardInterrupt"],
)
async def test_a_child_that_ends_without_a_result_raises_child_died(
    anyio_backend: object, fn: Any, args: tuple[int, ...], returncode: int
) -> None:
    with pytest.raises(ChildDied) as caught:
        await aioproc.fork_call(fn, *args)
    assert caught.value.returncode == returncode
    if returncode < 0:
        assert caught.value.signal == -returncode
        assert f"killed by {signal.Signals(-returncode).name}" in str(caught.value)
    else:
        assert caught.value.signal is None
        assert f"exited with status {returncode}" in str(caught.value)


def use_the_channel_alone() -> list[str]:
    channel = parent_channel()
    outcomes = []
    try:
        channel.receive()
    except anyio.EndOfStream:
        outcomes.append("end of stream")
    try:
        channel.send("anyone?")
    except anyio.BrokenResourceError:
        outcomes.append("broken")
    return outcomes


async def test_a_fork_call_child_finds_its_channel_closed(anyio_backend: object) -> None:
    # fork_call gives the parent no end to talk on: the child must not wait on it.
    assert await aioproc.fork_call(use_the_channel_alone) == ["end of stream", "broken"]


def touch_memory_then_return(megabytes: int) -> int:
    """A child with memory of its own, so that its exit takes a while (freeing it)."""
    block = bytearray(megabytes << 20)
    block[::4096] = b"\x01" * (len(block) // 4096)
    return os.getpid()


async def test_fork_call_returns_once_the_child_holds_none_of_our_fds(
    anyio_backend: object,
) -> None:
    # fork_call returns when the result is in, before the exit: the child must have
    # closed its copies of our fds by then, or a pipe it inherited would not be at EOF.
    read_fd, write_fd = os.pipe()
    try:
        pid = await aioproc.fork_call(touch_memory_then_return, 200)
        os.close(write_fd)
        write_fd = -1
        os.set_blocking(read_fd, False)
        assert os.read(read_fd, 1) == b""
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    with anyio.fail_after(30):  # and nobody waiting, it is reaped
        while pid in children_of_us():
            await anyio.sleep(0.01)


class SlowFlushHandler(logging.Handler):
    """A handler whose flush takes a while, then says which process flushed it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        time.sleep(0.2)
        self.path.write_text(str(os.getpid()))


async def test_the_childs_output_is_flushed_when_fork_call_returns(
    anyio_backend: object, tmp_path: Path
) -> None:
    # The child flushes every logging handler (and stdout, stderr) before it sends
    # its result: by the time fork_call returns, its flush has been done.
    handler = SlowFlushHandler(tmp_path / "flushed by")
    try:
        child_pid = await aioproc.fork_call(os.getpid)
        assert handler.path.read_text() == str(child_pid)
    finally:
        handler.close()


LOOP_ENDS_BEFORE_THE_EXIT = """
import os, sys
import anyio, aioproc

def touch_memory_then_return():
    block = bytearray(200 << 20)
    block[::4096] = b"\\x01" * (len(block) // 4096)
    return os.getpid()

pid = anyio.run(
    aioproc.fork_call, touch_memory_then_return,
    backend=sys.argv[1], backend_options=eval(sys.argv[2]),
)
try:
    os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    print("reaped")
else:
    print("still our child")
"""


async def test_a_loop_that_ends_right_after_fork_call_leaves_no_zombie(
    anyio_backend: object,
) -> None:
    result = await aioproc.run_process(
        [PY, "-c", LOOP_ENDS_BEFORE_THE_EXIT, *_script_backend(anyio_backend)]
    )
    assert result.stdout.decode().strip() == "reaped"


LOOP_CLOSED_WITH_TASKS_PENDING = """
import asyncio, gc, os, sys
import aioproc

def touch_memory_then_return():
    block = bytearray(200 << 20)
    block[::4096] = b"\\x01" * (len(block) // 4096)
    return os.getpid()

def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2]
    except FileNotFoundError:
        return "gone"

if sys.argv[1] == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
fds = set(os.listdir("/proc/self/fd"))  # uvloop's own pipe is there by now
pid = loop.run_until_complete(aioproc.fork_call(touch_memory_then_return))
loop.close()  # its tasks not cancelled, as asyncio.run() would
asyncio.run(aioproc.run_process(["true"]))  # the next call into aioproc
gc.collect()
print(state(pid), sorted(set(os.listdir("/proc/self/fd")) - fds))
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_loop_closed_with_its_tasks_pending_leaves_no_zombie_past_the_next_call(
    loop: str,
) -> None:
    # Not anyio.run nor asyncio.run: the background reaper is never cancelled, so
    # the child that was still exiting is reaped by the next call into aioproc.
    result = subprocess.run(
        [PY, "-c", LOOP_CLOSED_WITH_TASKS_PENDING, loop], capture_output=True, check=True
    )
    assert result.stdout.decode().strip() == "gone []", result.stderr.decode()
    assert b"Task was destroyed" not in result.stderr


async def test_the_outcome_can_be_asked_again(anyio_backend: object) -> None:
    async with aioproc.fork(raise_oops) as child:
        for _ in range(2):
            with pytest.raises(Oops):
                await child.result()
    assert child.returncode == 1


def test_no_os_fork_is_an_error_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fork")
    with pytest.raises(RuntimeError, match=r"needs os\.fork\(\)"):
        aioproc.fork(add, 1)


def test_bad_arguments_are_refused_at_call_time() -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        aioproc.fork(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_threads must be one of"):
        aioproc.fork(add, on_threads="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace must be >= 0"):
        aioproc.fork(add, grace=-1)


# -- the channel ------------------------------------------------------------------------


@pytest.mark.parametrize("server", [echo_server, async_echo_server])
async def test_a_child_answers_requests_until_the_parent_is_done(
    anyio_backend: object, server: Any
) -> None:
    async with aioproc.fork(server) as child:
        for number in range(50):
            await child.channel.send(number)
            assert await child.channel.receive() == number * 2
        await child.channel.send_eof()
        assert await child.result() == 50


async def test_the_parent_sees_the_end_when_the_child_exits(anyio_backend: object) -> None:
    def talk() -> None:
        for word in ("a", "b"):
            parent_channel().send(word)

    async with aioproc.fork(talk) as child:
        assert [message async for message in child.channel] == ["a", "b"]
        with pytest.raises(anyio.EndOfStream):
            await child.channel.receive()


def report_end_of_stream() -> str:
    channel = parent_channel()
    channel.send("ready")
    try:
        channel.receive()
    except anyio.EndOfStream:
        pass
    else:
        return "a message"
    try:
        channel.send("late")
    except anyio.BrokenResourceError:
        return "end of stream, then a broken channel"
    return "no error"


async def test_the_child_sees_the_end_when_the_parent_closes(anyio_backend: object) -> None:
    async with aioproc.fork(report_end_of_stream) as child:
        assert await child.channel.receive() == "ready"
        await child.channel.aclose()
        assert await child.result() == "end of stream, then a broken channel"


async def test_large_messages_cross_both_ways(anyio_backend: object) -> None:
    big = bytes(5_000_000)
    async with aioproc.fork(echo_server) as child:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child.channel.send, big)  # both pipes fill: send while receiving
            assert await child.channel.receive() == big * 2
        await child.channel.send_eof()
        assert await child.result() == 1


async def test_a_message_that_cannot_be_pickled_leaves_the_channel_usable(
    anyio_backend: object,
) -> None:
    async with aioproc.fork(echo_server) as child:
        with pytest.raises((TypeError, pickle.PicklingError)):
            await child.channel.send(threading.Lock())
        await child.channel.send(21)
        assert await child.channel.receive() == 42
        await child.channel.send_eof()


class Unloadable:
    """Pickles, but fails to unpickle."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("not a number",))


def send_unloadable_then_fine() -> None:
    parent_channel().send(Unloadable())
    parent_channel().send("fine")


async def test_a_message_that_cannot_be_unpickled_does_not_block_the_next(
    anyio_backend: object,
) -> None:
    async with aioproc.fork(send_unloadable_then_fine) as child:
        with pytest.raises(ValueError, match="invalid literal"):
            await child.channel.receive()
        assert await child.channel.receive() == "fine"


def test_parent_channel_exists_only_in_a_forked_child() -> None:
    with pytest.raises(RuntimeError, match=r"only available in a child started by aioproc\.fork"):
        parent_channel()


async def test_a_grandchild_talks_to_its_own_parent(anyio_backend: object) -> None:
    async def middle() -> tuple[int, str]:
        async with aioproc.fork(echo_server) as grandchild:
            await grandchild.channel.send("hi")
            answer = await grandchild.channel.receive()
            await grandchild.channel.send_eof()
            count = await grandchild.result()
        parent_channel().send("middle is done")
        return count, answer

    async with aioproc.fork(middle) as child:
        assert await child.channel.receive() == "middle is done"
        assert await child.result() == (1, "hihi")


def run_a_loop_in_plain_code() -> list[int]:
    import trio

    async def one() -> int:
        await anyio.sleep(0)
        return 1

    return [asyncio.run(one()), trio.run(one), anyio.run(one), anyio.run(one, backend="trio")]


async def test_plain_code_in_the_child_can_start_any_event_loop(anyio_backend: object) -> None:
    assert await aioproc.fork_call(run_a_loop_in_plain_code) == [1, 1, 1, 1]


# -- leaving early, cancellation --------------------------------------------------------


async def test_await_form_and_aclose(anyio_backend: object) -> None:
    child = await aioproc.fork(add, 1, 2)
    try:
        assert await child.result() == 3
    finally:
        await child.aclose()
    assert child.returncode == 0
    assert "ForkedProcess" in repr(child)
    assert "add" in repr(child)


async def test_leaving_by_an_exception_stops_the_child(anyio_backend: object) -> None:
    with pytest.raises(KeyError):
        async with aioproc.fork(ready_then_block) as child:
            assert await child.channel.receive() == "ready"
            raise KeyError
    assert child.returncode == -signal.SIGTERM
    assert not pid_alive(child.pid)
    with pytest.raises(ChildDied):
        await child.result()


async def test_cancelling_the_block_stops_the_child_and_closes_the_channel(
    anyio_backend: object,
) -> None:
    with anyio.CancelScope() as scope:
        async with aioproc.fork(ready_then_block) as child:
            assert await child.channel.receive() == "ready"
            scope.cancel()
            await child.result()
    assert scope.cancelled_caught
    assert child.returncode == -signal.SIGTERM
    with pytest.raises(anyio.ClosedResourceError):
        await child.channel.send("anyone?")
    with pytest.raises(anyio.ClosedResourceError):
        await child.channel.receive()


def block_forever_after_writing(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


async def test_cancelling_fork_call_stops_and_reaps_the_child(
    anyio_backend: object, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    async with anyio.create_task_group() as tg:
        tg.start_soon(aioproc.fork_call, block_forever_after_writing, str(marker))
        with anyio.fail_after(30):
            while not marker.exists() or not marker.read_text():
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    pid = int(marker.read_text())
    assert pid not in children_of_us()  # stopped and reaped: no zombie either


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready_then_block()


async def test_a_child_that_chose_to_ignore_sigterm_is_killed_after_grace(
    anyio_backend: object,
) -> None:
    with anyio.CancelScope() as scope:
        async with aioproc.fork(ignore_sigterm, grace=0.2) as child:
            assert await child.channel.receive() == "ready"
            scope.cancel()
            await anyio.sleep(60)
    assert child.returncode == -signal.SIGKILL


async def test_leaving_normally_waits_and_keeps_the_result(anyio_backend: object) -> None:
    async with aioproc.fork(ready_then_wait_for_go) as child:
        assert await child.channel.receive() == "ready"
        await child.channel.send("go")
    assert child.returncode == 0
    assert await child.result() == "go"


async def test_signals_wait_and_result_from_several_tasks(anyio_backend: object) -> None:
    results: list[object] = []

    async def collect(coro: Any) -> None:
        try:
            results.append(await coro)
        except ChildDied as exc:
            results.append(exc.returncode)

    async with aioproc.fork(ready_then_block) as child:
        assert await child.channel.receive() == "ready"
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, child.wait())
            tg.start_soon(collect, child.result())
            tg.start_soon(collect, child.wait())
            await anyio.sleep(0.05)
            child.send_signal(signal.SIGUSR1)
    assert sorted(map(str, results)) == [str(-signal.SIGUSR1)] * 3
    child.kill()  # a no-op once it has exited
    child.terminate()


# -- the safety rules of issue 3 --------------------------------------------------------


def sleep_in_whichever_way(seconds: float, asynchronous: bool) -> Any:
    if not asynchronous:
        time.sleep(seconds)
        return os.getpid()

    async def nap() -> int:
        await anyio.sleep(seconds)
        return os.getpid()

    return nap()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_1_the_parents_tasks_never_run_in_the_child(
    anyio_backend: object, tmp_path: Path, asynchronous: bool
) -> None:
    log = tmp_path / "log"
    forked = anyio.Event()

    async def keep_appending() -> None:
        while not forked.is_set():
            with log.open("a") as f:
                f.write(f"{os.getpid()}\n")
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_appending)
        await anyio.sleep(0.01)
        child_pid = await aioproc.fork_call(sleep_in_whichever_way, 0.1, asynchronous)
        forked.set()
    writers = set(log.read_text().split())
    assert writers == {str(os.getpid())}
    assert str(child_pid) not in writers


OUTPUT_ONCE = """
import logging, logging.handlers, sys
import anyio, aioproc

target = logging.StreamHandler(sys.stdout)
memory = logging.handlers.MemoryHandler(capacity=100, target=target)
log = logging.getLogger("demo")
log.addHandler(memory)
log.setLevel(logging.INFO)

def child():
    print("child print")
    log.info("child record")
    return 1

async def main():
    print("parent print before")            # stdout is a pipe: block-buffered
    sys.stderr.write("parent stderr before\\n")
    log.info("parent record before")        # held by the MemoryHandler
    await aioproc.fork_call(child)
    print("parent print after")

anyio.run(main, backend=sys.argv[1], backend_options=eval(sys.argv[2]))
"""


def _script_backend(anyio_backend: object) -> list[str]:
    if isinstance(anyio_backend, tuple):
        return [anyio_backend[0], "{'use_uvloop': True}"]
    return [str(anyio_backend), "{}"]


async def test_2_output_buffered_before_the_fork_appears_once(anyio_backend: object) -> None:
    result = await aioproc.run_process(
        [PY, "-c", OUTPUT_ONCE, *_script_backend(anyio_backend)], stderr=subprocess.STDOUT
    )
    lines = result.stdout.decode().splitlines()
    for line in ("parent print before", "parent stderr before", "parent record before"):
        assert lines.count(line) == 1, lines
    for line in ("child print", "child record", "parent print after"):
        assert lines.count(line) == 1, lines


def report_signal_state() -> tuple[int, bool, bool]:
    return (
        signal.set_wakeup_fd(-1),
        signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
    )


async def test_3_signal_handling_is_reset_and_sigterm_kills(anyio_backend: object) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1):  # the loop's handlers
        assert await aioproc.fork_call(report_signal_state) == (-1, True, True)
        async with aioproc.fork(ready_then_block) as child:
            assert await child.channel.receive() == "ready"
            child.terminate()
            assert await child.wait() == -signal.SIGTERM


def _idle_thread() -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="idle test thread")
    thread.start()
    return thread, done


@pytest.fixture
def other_thread() -> Iterator[threading.Thread]:
    thread, done = _idle_thread()
    try:
        yield thread
    finally:
        done.set()
        thread.join()


async def test_4_a_thread_makes_fork_warn_by_default(
    anyio_backend: object, other_thread: threading.Thread
) -> None:
    with pytest.warns(
        RuntimeWarning, match=r"other thread\(s\) .*idle test thread.*deadlock"
    ) as caught:
        assert await aioproc.fork_call(add, 1) == 1
        async with aioproc.fork(add, 2) as child:
            assert await child.result() == 2
    assert [Path(w.filename).name for w in caught] == ["test_fork.py"] * 2  # the caller's line


async def test_4_a_thread_makes_fork_refuse_when_asked(
    anyio_backend: object, other_thread: threading.Thread
) -> None:
    with pytest.raises(RuntimeError, match="on_threads='allow'"):
        await aioproc.fork_call(add, 1, on_threads="refuse")
    assert children_of_us() == {}


async def test_4_a_thread_is_allowed_when_asked(
    anyio_backend: object, other_thread: threading.Thread
) -> None:
    # Not a word: neither aioproc's warning nor Python 3.12+'s DeprecationWarning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert await aioproc.fork_call(add, 1, on_threads="allow") == 1
    assert caught == []


async def test_4_the_child_watchers_own_threads_do_not_count(anyio_backend: object) -> None:
    async with aioproc.open_process(["sleep", "60"], stdin=subprocess.DEVNULL) as sleeper:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert await aioproc.fork_call(add, 1) == 1
        sleeper.terminate()
    assert not [w for w in caught if "aioproc waitid" in str(w.message)]


def install_a_handler() -> bool:
    signal.signal(signal.SIGUSR1, lambda *args: None)
    return threading.current_thread() is threading.main_thread()


def test_a_loop_in_another_thread_can_fork() -> None:
    # The forking thread is the child's only thread, so it is its main thread,
    # where signal handlers can be set.
    results: dict[str, object] = {}

    def run(backend: str) -> None:
        async def main() -> object:
            return await aioproc.fork_call(install_a_handler, on_threads="allow")

        try:
            results[backend] = anyio.run(main, backend=backend)
        except BaseException as exc:
            results[backend] = exc

    for backend in ("asyncio", "trio"):
        thread = threading.Thread(target=run, args=(backend,))
        thread.start()
        thread.join()
    assert results == {"asyncio": True, "trio": True}


TO_THREAD_THEN_FORK = """
import sys, warnings
import anyio, aioproc

async def main():
    await anyio.to_thread.run_sync(int)  # leaves an idle worker for about 10 s
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert await aioproc.fork_call(int, "7") == 7
    print(sorted({(w.category.__name__, "to_thread" in str(w.message)) for w in caught}))

anyio.run(main, backend=sys.argv[1], backend_options=eval(sys.argv[2]))
"""


async def test_4_idle_anyio_worker_threads_are_reported(anyio_backend: object) -> None:
    # In a fresh interpreter: the idle worker would outlive this test here.
    result = await aioproc.run_process(
        [PY, "-c", TO_THREAD_THEN_FORK, *_script_backend(anyio_backend)]
    )
    assert result.stdout.decode().strip() == "[('RuntimeWarning', True)]"


def report_inherited_state(fds: list[int]) -> tuple[int, list[int]]:
    from aioproc import _watcher

    still_open = [fd for fd in fds if _fd_is_open(fd)]
    return len(_watcher.active_children()), still_open


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_5_the_child_forgets_the_parents_children_and_closes_their_fds(
    anyio_backend: object,
) -> None:
    before = open_fds()
    async with aioproc.open_process(["cat"]) as sibling:
        held = sorted(open_fds() - before)  # the sibling's pipes and exit fd
        assert held
        assert await aioproc.fork_call(report_inherited_state, held) == (0, [])
        assert sibling.stdin is not None
        await sibling.stdin.aclose()


async def test_5_a_sibling_sees_eof_and_exits_while_a_fork_child_lives(
    anyio_backend: object,
) -> None:
    # The fork child would hold the sibling's stdin write end, and under the thread
    # watcher the write end of its exit pipe: the sibling would never see EOF, or
    # the parent would never see the sibling exit.
    async with aioproc.open_process(["cat"], stdout=subprocess.DEVNULL) as sibling:
        async with aioproc.fork(ready_then_wait_for_go) as child:
            assert await child.channel.receive() == "ready"
            assert sibling.stdin is not None
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sibling.wait)
                    # Waiting on the exit fd by now: cat cannot exit first and be
                    # found by wait()'s first poll instead.
                    await anyio.wait_all_tasks_blocked()
                    await sibling.stdin.aclose()
            assert sibling.returncode == 0
            await child.channel.send("go")
        assert await child.result() == "go"


async def test_6_a_hundred_concurrent_fork_calls(anyio_backend: object) -> None:
    results: dict[int, int] = {}

    async def one(index: int) -> None:
        results[index] = await aioproc.fork_call(add, index, 1000)

    fds_before = open_fds()
    async with anyio.create_task_group() as tg:
        for index in range(100):
            tg.start_soon(one, index)
    assert results == {index: index + 1000 for index in range(100)}
    # fork_call does not wait for the exits: the watcher reaps them unattended.
    with anyio.fail_after(30):
        while open_fds() != fds_before or children_of_us():
            await anyio.sleep(0.01)
