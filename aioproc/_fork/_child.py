"""What runs in a child made by :func:`aioproc.fork`, from the fork to ``os._exit``.

The child starts as a copy of the parent taken in the middle of a running
event loop, inside one of its tasks. ``FIELD_NOTES.md`` §4 lists how that goes
wrong; each rule is kept here, where it applies:

* It never returns into the parent's loop: everything runs inside
  ``try/finally: os._exit()`` and every ``BaseException`` is caught, so no
  task of the parent ever runs again in the child.
* It never touches the parent's loop objects (their epoll set is shared with
  the parent). It only forgets them, so a fresh loop can start: asyncio's
  running loop, sniffio's and trio's thread-local run state are cleared.
* Signal handling is reset before any signal can reach the child (the parent
  blocks them around the fork): no wakeup fd (it would write into the parent's
  loop), every Python-level handler back to its default (SIGINT to
  ``default_int_handler``), so SIGTERM kills a child that did not choose
  otherwise. ``SIG_IGN`` dispositions stay, as across ``exec``.
* ``gc.freeze()`` first: the garbage the parent had not yet collected is never
  finalized here (twice-run finalizers, warnings about the parent's objects),
  and collections do not dirty the parent's pages.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import pickle
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from ._channel import set_parent, type_name

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine

    from ._channel import ParentChannel

__all__ = [
    "ALL_SIGNALS",
    "csignal",
    "exit_child",
    "flush_output",
    "handlers_to_reset",
    "run_child",
]

_EX_SOFTWARE = 70  # aioproc itself failed in the child (sysexits.h)
ALL_SIGNALS = frozenset(signal.valid_signals())

# The C functions under the signal module. Its Python wrappers turn each signal
# number and handler into an enum member (raising and catching a ValueError for
# a handler function), and in a fork child every object touched is a page
# copied: one signal.signal() call cost 130 pages on 3.11, against 4 here.
csignal: Any = getattr(signal, "_signal", signal)


def run_child(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    channel: ParentChannel,
    resets: list[tuple[int, Any]],
    sigmask: object,
    *,
    one_shot: bool,
) -> NoReturn:
    """Run ``fn`` in the child, send its outcome to the parent, and exit.

    ``loop_factory`` makes the child's event loop for an async ``fn``: an
    asyncio loop of the parent's class, or ``None`` for trio. ``resets`` and
    ``sigmask`` come from the parent (:func:`handlers_to_reset`, and the mask
    to restore): what the child can be handed, it does not work out, since
    every page it touches is a page copied. ``one_shot``: this is
    ``fork_call``'s child, whose parent does not wait for its exit.
    """
    status = _EX_SOFTWARE
    try:
        try:
            if one_shot:
                # The previous fork_call's child may still be exiting on another
                # CPU; this one then often starts on the parent's CPU and takes it
                # over, and every call runs one process at a time. Yielding lets
                # the parent go on to its loop and a CPU that turns idle take the
                # child. (fork_call, 50 MB parent, 2 CPUs: 2.4-2.6 ms a call with
                # it; without, 2.5 ms or, once placement falls that way, 3.5-4.0 ms.
                # Where the parent waits for each exit it only cost: 6%.)
                os.sched_yield()
            csignal.set_wakeup_fd(-1)
            for sig, handler in resets:
                csignal.signal(sig, handler)
            csignal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
            gc.freeze()
            _forget_event_loops()
            set_parent(channel)
            outcome, exit_status = _call(fn, args, kwargs, loop_factory)
            if outcome is not None:
                _report(outcome, channel)
            status = exit_status
        except BaseException:
            traceback.print_exc()
    finally:
        exit_child(status)


def exit_child(status: int) -> NoReturn:  # pragma: no cover - in a child
    """End a forked child: flush its output, then exit with ``status``, or die by
    signal ``-status`` when it is negative, as Python does on KeyboardInterrupt."""
    try:
        csignal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
        flush_output()
        if status < 0:
            signal.signal(-status, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {-status})
            os.kill(os.getpid(), -status)
    finally:
        os._exit(status if status >= 0 else 128 - status)


def _call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> tuple[bytes | None, int]:
    """Run ``fn``; return its outcome to send, pickled, if any, and the exit status
    (negative: die by that signal)."""
    try:
        value = fn(*args, **kwargs)
        if inspect.iscoroutine(value):
            value = _run_coroutine(value, loop_factory)
    except SystemExit as exc:
        # An exit, not an error: no result, the status as Python would give it.
        if exc.code is None or isinstance(exc.code, int):
            return None, (exc.code or 0) & 0xFF  # sys.exit(-1) is status 255, not a signal
        print(exc.code, file=sys.stderr)
        return None, 1
    except Exception as exc:
        return _pack_exception(fn, exc), 1
    except BaseException as exc:
        # KeyboardInterrupt, a stray cancellation: raised in the parent these would
        # pass for its own. Report and exit as an uncaught one in Python would.
        traceback.print_exc()
        return None, -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    return _pack_value(fn, value)


def _report(outcome: bytes, channel: ParentChannel) -> None:
    """Send the result: the child's last act but its exit.

    ``fork_call`` returns as soon as the result is in, while the kernel is still
    tearing down the child's copy of the parent's memory. So everything else
    the parent could notice goes first: the output is flushed and every other
    fd is closed (pipes shared with the parent see EOF, locks the child took
    through them are released), and only the exit is left, which the child
    watcher reaps unattended.
    """
    flush_output()
    close_fds_except(channel.result_fd)
    with contextlib.suppress(BrokenPipeError):  # the parent has stopped listening
        channel.send_result(outcome)


def close_fds_except(keep: int) -> None:
    """Close every fd of this process but ``keep``."""
    if sys.platform == "linux":  # close_range(2): one system call each
        os.closerange(0, keep)
        os.closerange(keep + 1, 2**31 - 1)
        return
    # Elsewhere os.closerange() may try every number up to the limit, one by one.
    for name in os.listdir("/dev/fd"):
        fd = int(name)
        if fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _run_coroutine(
    coro: Coroutine[Any, Any, Any],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> Any:
    if loop_factory is None:
        import trio

        async def main() -> Any:
            return await coro

        return trio.run(main)
    import asyncio

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def _pickle(outcome: tuple[bool, Any]) -> bytes:
    return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)


def _pack_value(fn: Callable[..., Any], value: Any) -> tuple[bytes, int]:
    try:
        return _pickle((True, value)), 0
    except Exception as exc:
        error = pickle.PicklingError(
            f"{_name(fn)} returned a {type_name(value)}, which cannot be pickled "
            f"to send it to the parent: {exc}"
        )
        return _pack_exception(fn, error, exc), 1


def _pack_exception(
    fn: Callable[..., Any], exc: BaseException, cause: BaseException | None = None
) -> bytes:
    """The outcome for a raised exception, with its formatted traceback, pickled.

    It is unpickled here once: an exception class whose ``__init__`` does not take
    its ``args`` back would only fail in the parent, where its type is unknown.
    """
    shown = exc if cause is None else cause
    text = "".join(traceback.format_exception(type(shown), shown, shown.__traceback__))
    try:
        outcome = _pickle((False, (exc, text)))
        pickle.loads(outcome)
    except Exception as problem:
        error = pickle.PicklingError(
            f"{_name(fn)} raised {type_name(exc)}({_safe_str(exc)}), which cannot be "
            f"sent to the parent: {problem!r}"
        )
        outcome = _pickle((False, (error, text)))
    return outcome


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__qualname__', None) or repr(fn)}()"


def _safe_str(exc: BaseException) -> str:
    try:
        return repr(str(exc))
    except Exception:
        return "?"


def handlers_to_reset() -> list[tuple[int, Any]]:
    """The Python-level handlers to put back to their defaults in a child, with those defaults."""
    resets: list[tuple[int, Any]] = []
    for sig in ALL_SIGNALS:
        handler = csignal.getsignal(sig)  # 1.4 µs for all, against 21 through signal.getsignal
        if callable(handler):
            default = signal.default_int_handler if sig == signal.SIGINT else csignal.SIG_DFL
            if handler is not default:
                resets.append((int(sig), default))
    return resets


def _forget_event_loops() -> None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        asyncio.events._set_running_loop(None)
        if sys.version_info < (3, 12):  # 3.12+ does this at fork itself (gh-66285)
            policy = asyncio.events._event_loop_policy
            if isinstance(policy, asyncio.events.BaseDefaultEventLoopPolicy):
                # This thread's loop forgotten: a new _Local() would copy more pages.
                policy._local.__dict__.clear()
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        sniffio.thread_local.name = None
        sniffio.current_async_library_cvar.set(None)
    trio_run = sys.modules.get("trio._core._run")
    if trio_run is not None:
        # What trio.run itself does when a run ends; trio.run refuses to start until then.
        trio_run.GLOBAL_RUN_CONTEXT.__dict__.clear()


def flush_output() -> None:
    """Flush ``sys.stdout``, ``sys.stderr`` and every logging handler.

    Before a fork, so that nothing buffered is written once by each process; in
    the child before ``os._exit``, which flushes nothing itself.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    logging = sys.modules.get("logging")
    if logging is not None:
        for ref in list(getattr(logging, "_handlerList", ())):
            handler = ref()
            try:
                if handler is not None:
                    handler.flush()
            except Exception:
                pass
