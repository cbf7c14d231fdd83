"""``python -m aioproc``: a short demo of the toolkit, and ``detach`` for the shell.

``python -m aioproc [asyncio|trio]`` runs the demo on that event loop
(``--version`` prints the version); ``python -m aioproc detach
[--stdout FILE] [--stderr FILE] [--cwd DIR] [--pid-file FILE] -- cmd args...``
is ``nohup setsid cmd args... &``: it prints the pid of the detached command.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
import sys
import tempfile

import anyio

import aioproc

BACKENDS = ("asyncio", "trio")

# The worker of the master/worker demo: it outlives the master that starts it.
WORKER = [
    sys.executable,
    "-c",
    "import os, time; time.sleep(1); print(f'worker {os.getpid()} done after 1 s', flush=True)",
]


def sum_of_squares(n: int) -> tuple[int, int]:
    return os.getpid(), sum(i * i for i in range(n))


async def demo() -> None:
    # PHP: $p = proc_open('bash', $spec, $pipes); fwrite($pipes[0], "pwd\n");
    #      echo stream_get_contents($pipes[1]); echo proc_close($p);
    print(f"child watcher: {aioproc.child_watcher()}")
    async with aioproc.open_process(["bash"]) as bash:
        assert bash.stdin is not None
        assert bash.stdout is not None
        await bash.stdin.send(b"pwd\n")
        await bash.stdin.aclose()
        print(f"bash says: {(await bash.stdout.read_all()).decode().strip()}")
        print(f"exit status: {await bash.wait()}")

    result = await aioproc.run_process("echo captured by run_process; exit 3", check=False)
    print(f"run_process: {result.stdout.decode().strip()!r}, exit status {result.returncode}")

    # PHP: $pid = pcntl_fork(); if ($pid == 0) { /* compute */ exit(0); }
    #      pcntl_waitpid($pid, $status);  (and a pipe of your own for the result)
    pid, total = await aioproc.fork_call(sum_of_squares, 1000)
    print(f"fork_call: child {pid} computed the sum of squares below 1000: {total}")

    # PHP: exec('bash -c "exec nohup setsid php worker.php > /dev/null 2>&1 &"');
    # The master is `python -m aioproc detach`, which awaits aioproc.detach(): it
    # prints the worker's pid and exits at once, while the worker sleeps on.
    with tempfile.TemporaryDirectory() as tmp:
        log = anyio.Path(tmp, "worker.log")
        master = await aioproc.run_process(
            [sys.executable, "-m", "aioproc", "detach", "--stdout", str(log), "--", *WORKER]
        )
        pid = int(master.stdout)
        print(f"master exited with status {master.returncode}; worker {pid} runs: {_runs(pid)}")
        with anyio.fail_after(10):
            while not await log.read_text():  # noqa: ASYNC110 - not our child: no exit to await
                await anyio.sleep(0.05)
        print(f"worker's output: {(await log.read_text()).strip()!r}")


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _detach_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aioproc detach",
        description="Start a command detached from this shell (a new session, reparented "
        "to init, stdio on /dev/null unless redirected), print its pid, and exit: "
        "`nohup setsid cmd &`, with errors reported.",
        epilog="Exit status: 0 once the command runs, 127 if the program is not found, 126 if "
        "it cannot be executed, 125 for any other failure (as nohup and env do).",
    )
    parser.add_argument("--stdout", metavar="FILE", help="append the command's stdout to FILE")
    parser.add_argument(
        "--stderr",
        metavar="FILE",
        help="append its stderr to FILE (default: where --stdout goes, else /dev/null)",
    )
    parser.add_argument("--cwd", metavar="DIR", help="run it in DIR")
    parser.add_argument("--pid-file", metavar="FILE", help="write its pid to FILE, atomically")
    parser.add_argument("command", nargs="+", help="the program and its arguments, after --")
    return parser


def detach_main(argv: list[str]) -> int:
    parser = _detach_parser()
    args = parser.parse_args(argv)
    stdout = args.stdout if args.stdout is not None else aioproc.DEVNULL
    if args.stderr is not None:
        stderr = args.stderr
    else:
        stderr = aioproc.STDOUT if args.stdout is not None else aioproc.DEVNULL
    start = functools.partial(
        aioproc.detach,
        args.command,
        stdout=stdout,
        stderr=stderr,
        cwd=args.cwd,
        pid_file=args.pid_file,
    )
    try:
        detached = anyio.run(start)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return _exit_status(exc, args.command[0])
    print(detached.pid)
    return 0


def _exit_status(error: Exception, program: str) -> int:
    """nohup's and env's statuses: 127 and 126 are about the program, 125 about anything else.

    Only an error that names the program is about it: a log file, a pid file or
    the ``--cwd`` that cannot be opened is 125, whatever the errno.
    """
    if isinstance(error, OSError) and error.filename == program:
        return 127 if isinstance(error, FileNotFoundError) else 126
    return 125


def main(argv: list[str]) -> int:
    if argv[1:2] == ["detach"]:
        return detach_main(argv[2:])
    parser = argparse.ArgumentParser(
        prog="python -m aioproc",
        description="Run a short demo of aioproc on the event loop you name: spawn and talk "
        "to bash, run and capture, fork_call, and a master that detaches a worker. "
        "It takes about two seconds and prints what each step did.",
        epilog="Subcommand: `python -m aioproc detach [options] -- cmd args...` starts cmd "
        "detached from this shell (like `nohup setsid cmd &`) and prints its pid; "
        "see `python -m aioproc detach --help`.",
    )
    parser.add_argument(
        "backend",
        nargs="?",
        default="asyncio",
        choices=BACKENDS,
        help="the event loop library to run the demo on (default: asyncio); trio needs "
        "the trio extra: pip install 'aioproc[trio]'",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"aioproc {aioproc.__version__} (Python {sys.version.split()[0]})",
    )
    args = parser.parse_args(argv[1:])
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        parser.error(
            "trio is not installed: pip install 'aioproc[trio]', or run the demo on asyncio"
        )
    anyio.run(demo, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
