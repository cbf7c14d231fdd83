"""``python -m aioproc``: a short demo of the toolkit."""

from __future__ import annotations

import sys

import anyio

import aioproc


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


def main(argv: list[str]) -> int:
    backend = argv[1] if len(argv) > 1 else "asyncio"
    anyio.run(demo, backend=backend)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
