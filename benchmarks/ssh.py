"""7. ssh: remote commands through one master connection, against the raw ``ssh`` client.

Each run starts its own OpenSSH sshd on 127.0.0.1 (``tests/ssh_server.py``: it
needs root and the user ``sshtest``, as the tests do) with 8 ports, one "host"
each. The reference is the raw client over a master of the same kind
(``ssh -M -S ctl -N``, started outside the timing):

* ``latency``: sequential ``true``, commands/s; raw: ``ssh -S ctl host true``.
  aioproc asks the master for each session itself (``aioproc/ssh/_mux.py``),
  where the raw way starts an ``ssh`` client to do that. The remote ``sh -c
  true`` runs the shell's builtin ``true`` and execs nothing, where aioproc
  execs the program (``/bin/true``), as it does any program of a sequence; the
  row ``raw ssh client, same master, exec`` runs ``ssh -S ctl host 'exec
  true'``, the same remote work as aioproc's;
* ``throughput``: remote ``head -c N /dev/zero`` read to EOF, MB/s (10⁶ bytes);
  raw: ``ssh -S ctl host 'head -c N /dev/zero' | cat >/dev/null``;
* ``fan-out``: 200 ``true`` over the 8 hosts, commands/s; aioproc's
  ``fan_out(limit=64, per_host=8)``, raw: ``xargs -P 64`` running ``ssh -S``
  (GNU parallel is not installed here).

Connecting (the aioproc master, and the raw masters) is outside the timing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from ._core import Case, Impl, Measurement, Metric, Mode, run_on

API = "aioproc.ssh"
RAW = Impl("raw ssh client, same master")
RAW_EXEC = Impl("raw ssh client, same master, exec")  # latency: `exec true`, as aioproc does
FAN_OUT = 200


def cases(mode: Mode) -> list[Case]:
    latency = {"full": 300, "quick": 60, "smoke": 3}[mode]
    size = {"full": 1 << 30, "quick": 128 << 20, "smoke": 1 << 20}[mode]
    fan = {"full": FAN_OUT, "quick": FAN_OUT, "smoke": 16}[mode]
    return [
        Case(f"latency: {latency} x true, commands/s", {"kind": "latency", "count": latency}),
        Case(f"throughput: {size >> 20} MiB of stdout, MB/s", {"kind": "throughput", "size": size}),
        Case(f"fan-out: {fan} x true over 8 hosts, commands/s", {"kind": "fanout", "count": fan}),
    ]


def _raw(server: Any, params: dict[str, Any], exec_: bool = False) -> float:
    directory = tempfile.mkdtemp(prefix="aioproc-bench-", dir="/tmp")
    control = os.path.join(directory, "%n")
    masters = []
    try:
        for host in server.hosts:
            masters.append(
                subprocess.Popen(
                    ["ssh", "-F", server.config, "-M", "-S", control, "-N", host],
                    stdin=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 30
        for host, master in zip(server.hosts, masters, strict=True):
            while subprocess.run(
                ["ssh", "-F", server.config, "-S", control, "-O", "check", host],
                capture_output=True,
                check=False,
            ).returncode:
                if master.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the raw master to {host} is not up: {master.poll()}")
                time.sleep(0.01)
        host = server.hosts[0]
        ssh = ["ssh", "-F", server.config, "-S", control]
        kind = params["kind"]
        if kind == "latency":
            remote = "exec true" if exec_ else "true"
            subprocess.run([*ssh, host, remote], check=True)
            start = time.perf_counter()
            for _ in range(params["count"]):
                subprocess.run([*ssh, host, remote], check=True)
            return params["count"] / (time.perf_counter() - start)
        if kind == "throughput":
            command = (
                f"ssh -F {server.config} -S {control} {host} 'head -c {params['size']} /dev/zero'"
                " | cat > /dev/null"
            )
            start = time.perf_counter()
            subprocess.run(command, shell=True, check=True)
            return params["size"] / (time.perf_counter() - start) / 1e6
        hosts = "".join(
            f"{server.hosts[index % len(server.hosts)]}\n" for index in range(params["count"])
        )
        start = time.perf_counter()
        subprocess.run(
            ["xargs", "-P", "64", "-I", "{}", *ssh, "{}", "true"],
            input=hosts.encode(),
            check=True,
        )
        return params["count"] / (time.perf_counter() - start)
    finally:
        # A master sometimes outlives SIGTERM under load (seen in the CI smoke run,
        # which then hung here): outside the timing, so SIGKILL it after 5 s.
        for master in masters:
            master.terminate()
        for master in masters:
            try:
                master.wait(timeout=5)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _aioproc(server: Any, loop: Any, params: dict[str, Any]) -> float:
    from aioproc import ssh

    async def main() -> float:
        kind = params["kind"]
        config = server.config
        if kind == "fanout":
            async with _hosts(server) as hosts:
                jobs = [hosts[index % len(hosts)] for index in range(params["count"])]
                start = time.perf_counter()
                async with ssh.fan_out(jobs, ["true"], limit=64, per_host=8) as results:
                    async for _, result in results:
                        assert not isinstance(result, Exception), result
                return params["count"] / (time.perf_counter() - start)
        async with ssh.connect(server.hosts[0], config=config) as host:
            await host.run_process(["true"])
            if kind == "latency":
                start = time.perf_counter()
                for _ in range(params["count"]):
                    await host.run_process(["true"])
                return params["count"] / (time.perf_counter() - start)
            size = params["size"]
            start = time.perf_counter()
            async with host.open_process(
                ["head", "-c", str(size), "/dev/zero"], stdin=subprocess.DEVNULL
            ) as process:
                assert process.stdout is not None
                received = 0
                async for chunk in process.stdout:
                    received += len(chunk)
            elapsed = time.perf_counter() - start
            assert received == size
            return size / elapsed / 1e6

    return run_on(loop, main)


def _hosts(server: Any) -> Any:
    from contextlib import AsyncExitStack, asynccontextmanager

    from aioproc import ssh

    @asynccontextmanager
    async def connected() -> Any:
        async with AsyncExitStack() as stack:
            yield [
                await stack.enter_async_context(ssh.connect(name, config=server.config))
                for name in server.hosts
            ]

    return connected()


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.ssh_server import start_server

    server = start_server()
    try:
        if impl in (RAW, RAW_EXEC):
            rate = _raw(server, params, exec_=impl == RAW_EXEC)
        else:
            assert impl.loop is not None
            rate = _aioproc(server, impl.loop, params)
    finally:
        server.kill_remote_processes()
        server.stop()
    return {"rate": rate}


MEASUREMENT = Measurement(
    name="ssh",
    title="ssh: remote commands through one master, against the raw ssh client",
    impls=(Impl(API, "asyncio"), Impl(API, "uvloop"), Impl(API, "trio"), RAW, RAW_EXEC),
    reference=RAW,
    metrics=(Metric("rate", "commands/s, or MB/s", higher_is_better=True, fmt="{:,.1f}"),),
    cases=cases,
    run=run,
    notes=(
        "An sshd on 127.0.0.1 per run (tests/ssh_server.py: root and the user sshtest).",
        "Targets: latency >= 1/1.1 of raw, throughput >= 0.9x raw.",
    ),
    requires="ssh",
)
