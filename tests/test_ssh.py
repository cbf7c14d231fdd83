"""aioproc.ssh against a real OpenSSH sshd on 127.0.0.1 (see ``ssh_server.py``).

Every test runs on asyncio, uvloop and trio, and afterwards checks that no
remote process of ours is left (by the server port in ``SSH_CONNECTION``).
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest

import aioproc
from aioproc import ssh

from .helpers import children_of_us, helper_code, open_fds, wait_until
from .ssh_server import SSHServer, sshd_missing, start_server

GRACE = 0.5  # the guard's grace in these tests, seconds

HARD_ARGUMENTS = [
    "two words",
    "$HOME",
    "${x:-y}",
    "'single'",
    '"double"',
    "back\\slash",
    "new\nline",
    "*",
    "-n",
    "--",
    "é ünïcode ✓",
    "",
    "semi;colon && pipe | amp &",
    "`backtick` $(subshell)",
    " leading and trailing ",
    "tab\there",
]


@pytest.fixture(scope="session", name="sshd_server")
def sshd_server_fixture() -> Iterator[SSHServer]:
    missing = sshd_missing()
    if missing:  # never a skip: CI installs it, and so should a developer
        pytest.fail(f"the ssh tests need a real sshd: {missing}")
    server = start_server()
    try:
        yield server
    finally:
        server.kill_remote_processes()
        server.stop()


@pytest.fixture(name="server")
def server_fixture(sshd_server: SSHServer) -> Iterator[SSHServer]:
    """The server, checked after the test: none of our remote processes is left."""
    assert not sshd_server.remote_processes(), "a remote process was left by an earlier test"
    yield sshd_server
    left = sshd_server.wait_no_remote_processes(timeout=GRACE + 10)
    if left:
        sshd_server.kill_remote_processes()
    assert not left, f"remote processes left: {left}"


@asynccontextmanager
async def connected(
    server: SSHServer, index: int = 0, **options: object
) -> AsyncIterator[ssh.Host]:
    options.setdefault("grace", GRACE)
    async with ssh.connect(server.hosts[index], config=server.config, **options) as host:  # type: ignore[arg-type]
        yield host


def commands_running(server: SSHServer, name: str) -> Counter[int]:
    """How many remote processes of ours run program ``name``, by server port."""
    return Counter(
        port
        for port, cmdline in server.remote_processes().values()
        if cmdline.split(" ")[0].rsplit("/", 1)[-1] == name
    )


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- the connection ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_connect_and_run(server: SSHServer) -> None:
    async with connected(server) as host:
        assert len(host.control_path.encode()) < 104
        assert os.stat(os.path.dirname(host.control_path)).st_mode & 0o777 == 0o700
        result = await host.run_process(["sh", "-c", 'echo "$USER:$SSH_CONNECTION"'])
        user, connection = result.stdout.decode().strip().split(":")
        assert user == "sshtest"
        assert connection.split()[-1] == str(server.ports[0])
        assert await host.is_alive()
    assert not os.path.exists(host.control_path)
    with pytest.raises(RuntimeError, match="closed"):
        await host.run_process(["true"])


@pytest.mark.anyio
async def test_connect_with_port_identity_and_options(server: SSHServer) -> None:
    async with ssh.connect(
        "sshtest@127.0.0.1",
        port=server.ports[1],
        identity=server.identity,
        ssh_options=server.ssh_options(),
        grace=GRACE,
    ) as host:
        result = await host.run_process("echo $SSH_CONNECTION")
        assert result.stdout.split()[-1] == str(server.ports[1]).encode()


# -- arguments cross a remote shell ------------------------------------------------------


@pytest.mark.anyio
async def test_quoting_table_matches_local(server: SSHServer) -> None:
    command = ["printf", "[%s]\\n", *HARD_ARGUMENTS]
    local = await aioproc.run_process(command)
    async with connected(server) as host:
        remote = await host.run_process(command)
        assert remote.stdout == local.stdout
        for argument in HARD_ARGUMENTS:  # one at a time too: the empty one alone
            one = ["printf", "[%s]", argument]
            assert (await host.run_process(one)).stdout == (await aioproc.run_process(one)).stdout
        # A str is a shell command line, as locally.
        line = "printf '%s|' a\\ b \"$((1+2))\" '*'; echo"
        assert (await host.run_process(line)).stdout == (await aioproc.run_process(line)).stdout


@pytest.mark.anyio
async def test_cwd_and_env_are_quoted(server: SSHServer) -> None:
    async with connected(server) as host:
        base = (await host.run_process(["mktemp", "-d"])).stdout.decode().strip()
        try:
            directory = base + '/it\'s a "dir" $x *'
            await host.run_process(["mkdir", directory])
            env = {f"V{index}": value for index, value in enumerate(HARD_ARGUMENTS)}
            result = await host.run_process(
                [
                    "sh",
                    "-c",
                    "pwd; for v in "
                    + " ".join(env)
                    + '; do eval "printf \'[%s]\' \\"\\$$v\\""; done',
                ],
                cwd=directory,
                env=env,
            )
            expected = "".join(f"[{value}]" for value in HARD_ARGUMENTS)
            assert result.stdout.decode() == directory + "\n" + expected
        finally:
            await host.run_process(["rm", "-rf", base])


# -- exit statuses -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_exit_statuses(server: SSHServer) -> None:
    async with connected(server) as host:
        for status in (0, 1, 3, 127, 254, 255):
            result = await host.run_process(["sh", "-c", f"exit {status}"], check=False)
            assert result.returncode == status
        with pytest.raises(subprocess.CalledProcessError) as info:
            await host.run_process("echo out; echo err >&2; exit 7")
        assert (info.value.returncode, info.value.stdout, info.value.stderr) == (
            7,
            b"out\n",
            b"err\n",
        )
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGUSR1):
            async with host.open_process(["sleep", "30"]) as process:
                process.send_signal(sig)
                assert await process.wait() == -sig


@pytest.mark.anyio
async def test_pid_is_the_remote_group(server: SSHServer) -> None:
    async with connected(server) as host:
        async with host.open_process(
            ["sh", "-c", "echo $$; sleep 30 & sleep 30 & wait"]
        ) as process:
            assert process.stdout is not None
            line = await process.stdout._readline()
            assert int(line) == process.pid
            await wait_until(lambda: commands_running(server, "sleep")[server.ports[0]] == 2)
            assert os.getpgid(process.pid) == process.pid
            sleepers = [
                pid
                for pid, (_, cmd) in server.remote_processes().items()
                if cmd.startswith("sleep")
            ]
            assert {os.getpgid(pid) for pid in sleepers} == {process.pid}
            process.terminate(group=True)
            assert await process.wait() == -signal.SIGTERM
        await wait_until(lambda: not commands_running(server, "sleep"))


# -- streams -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_talk_line_by_line(server: SSHServer) -> None:
    async with connected(server) as host, host.open_process(["cat"]) as cat:
        assert cat.stdin is not None
        assert cat.stdout is not None
        for word in (b"one\n", b"two\n"):
            await cat.stdin.send(word)
            assert await cat.stdout._readline() == word
        await cat.stdin.aclose()
        assert await cat.stdout.read_all() == b""
        assert await cat.wait() == 0


@pytest.mark.anyio
async def test_64_mib_each_way_through_remote_cat(server: SSHServer) -> None:
    data = os.urandom(64 << 20)
    async with connected(server) as host:
        result = await host.run_process(["cat"], input=data)
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_stderr_choices(server: SSHServer, tmp_path: object) -> None:
    script = "echo out; echo err >&2"
    async with connected(server) as host:
        result = await host.run_process(script, stderr=subprocess.STDOUT)
        assert (result.stdout, result.stderr) == (b"out\nerr\n", None)
        result = await host.run_process(script, stderr=subprocess.DEVNULL)
        assert (result.stdout, result.stderr) == (b"out\n", None)
        path = os.path.join(str(tmp_path), "err")
        with open(path, "wb") as f:
            await host.run_process(script, stderr=f)
        await wait_until(lambda: read_file(path) == b"err\n")


@pytest.mark.anyio
async def test_a_remote_stage_between_local_pipelines(server: SSHServer) -> None:
    """``a | ssh host b | c``: the remote command's streams are the pipelines' ends, and
    the kernel moves the bytes (the master reads and writes the pipes itself)."""
    data = os.urandom(8 << 20)
    async with connected(server) as host, host.open_process(["gzip", "-1"]) as remote:
        assert remote.stdin is not None
        async with (
            aioproc.pipeline(["cat"], ["cat"], stdout=remote.stdin, stderr=None) as upstream,
            aioproc.pipeline(["gunzip"], ["sha256sum"], stdin=remote.stdout, stderr=None) as down,
        ):
            assert upstream.stdin is not None
            assert down.stdout is not None
            async with anyio.create_task_group() as tg:

                async def feed() -> None:
                    assert upstream.stdin is not None
                    await upstream.stdin.send(data)
                    await upstream.stdin.aclose()

                tg.start_soon(feed)
                digest = await down.stdout.read_all()
            assert await upstream.wait() == 0
            assert await down.wait() == 0
        assert await remote.wait() == 0
    assert digest.split()[0].decode() == hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_leaving_by_an_error_stops_the_local_and_the_remote_stages(
    server: SSHServer,
) -> None:
    with pytest.raises(KeyError):
        async with connected(server) as host, host.open_process(["cat"]) as remote:
            assert remote.stdin is not None
            async with aioproc.pipeline(
                ["yes"], ["cat"], stdin=subprocess.DEVNULL, stdout=remote.stdin, stderr=None
            ) as local:
                assert remote.stdout is not None
                assert await remote.stdout.receive(1)  # bytes made it across
                raise KeyError
    assert local.returncodes == [-signal.SIGTERM, -signal.SIGTERM]
    assert remote.returncode is not None
    # the server fixture checks that no remote process is left


# -- stopping reaches the remote command -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("leave", ["error", "normally"])
async def test_leaving_with_output_unread_does_not_hang(server: SSHServer, leave: str) -> None:
    """The master cannot end a session while it holds output nobody reads: the stop (and
    aclose) close our ends first. This hung for ever before."""
    async with connected(server) as host:
        with anyio.fail_after(GRACE + 10):
            try:
                async with host.open_process(["yes"], stdin=subprocess.DEVNULL) as process:
                    assert process.stdout is not None
                    assert await process.stdout.receive(1)
                    if leave == "error":
                        raise KeyError
            except KeyError:
                pass
    # 255: `yes` died of SIGPIPE, a signal that was not ours, reported as ssh reports it.
    expected = -signal.SIGTERM if leave == "error" else 255
    assert process.returncode == expected


@pytest.mark.anyio
async def test_leaving_by_error_stops_the_remote_group(server: SSHServer) -> None:
    async with connected(server) as host:
        with pytest.raises(KeyError):
            async with host.open_process(["sh", "-c", "sleep 30 & exec sleep 30"]):
                await wait_until(lambda: commands_running(server, "sleep")[server.ports[0]] == 2)
                raise KeyError
        ended = time.monotonic()
        await wait_until(lambda: not commands_running(server, "sleep"), within=GRACE + 0.1)
        assert time.monotonic() - ended <= GRACE + 0.1


@pytest.mark.anyio
async def test_term_ignored_then_killed_after_grace(server: SSHServer) -> None:
    async with (
        connected(server) as host,
        host.open_process(
            ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"], grace=0.3
        ) as process,
    ):
        assert process.stdout is not None
        assert await process.stdout._readline() == b"ready\n"
        await process.stop()
        assert process.returncode == -signal.SIGKILL


@pytest.mark.anyio
async def test_timeout_and_cancel_stop_the_remote_command(server: SSHServer) -> None:
    async with connected(server) as host:
        with pytest.raises(subprocess.TimeoutExpired):
            await host.run_process(["sh", "-c", "echo partial; exec sleep 30"], timeout=1)
        with anyio.move_on_after(1):
            await host.run_process(["sleep", "30"])
        await wait_until(lambda: not commands_running(server, "sleep"), within=GRACE + 0.1)


@pytest.mark.anyio
async def test_deliver_cancel_signals_through_the_guard(server: SSHServer) -> None:
    async def interrupt(process: aioproc.Process) -> None:
        process.send_signal(signal.SIGINT)

    async with connected(server) as host:
        with anyio.move_on_after(1):
            await host.run_process(["sleep", "30"], deliver_cancel=interrupt)
        async with host.open_process(["sleep", "30"], deliver_cancel=interrupt) as process:
            await process.stop()
        assert process.returncode == -signal.SIGINT


@pytest.mark.anyio
async def test_closing_the_connection_stops_what_runs(server: SSHServer) -> None:
    async with connected(server) as host:
        process = await host.open_process(["sleep", "30"], stdin=subprocess.DEVNULL)
        await wait_until(lambda: commands_running(server, "sleep"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(process.aclose)
            tg.start_soon(host._close)
    # Stopped by the guard's SIGTERM, which ssh reports as 255 (it was not ours to count).
    assert process.returncode == 255
    assert not commands_running(server, "sleep")


def test_sigkill_of_the_parent_stops_remote_commands(
    server: SSHServer, anyio_backend: object
) -> None:
    body = f"""
async with aioproc.ssh.connect({server.host!r}, config={server.config!r}, grace={GRACE}) as host:
    async with host.open_process(["sh", "-c", "sleep 300 & exec sleep 300"]) as process:
        print(process.pid, host.control_path, flush=True)
        await anyio.sleep(300)
"""
    with subprocess.Popen(helper_code(anyio_backend, body), stdout=subprocess.PIPE) as helper:
        assert helper.stdout is not None
        pid_text, control = helper.stdout.readline().split()
        pid = int(pid_text)
        deadline = time.monotonic() + 10
        while commands_running(server, "sleep")[server.ports[0]] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.getpgid(pid) == pid
        helper.kill()
        helper.wait()
        killed = time.monotonic()
        while commands_running(server, "sleep"):
            assert time.monotonic() - killed <= GRACE + 1, "remote commands outlived us"
            time.sleep(0.01)
    # Nobody was left to remove the control directory: the master died with the helper.
    shutil.rmtree(os.path.dirname(control))


@pytest.mark.anyio
async def test_connection_drop_raises_sshError(server: SSHServer) -> None:
    async with connected(server) as host:
        async with host.open_process(["sleep", "30"]) as process:
            await wait_until(lambda: commands_running(server, "sleep"))
            assert host._master is not None
            host._master.kill()
            with pytest.raises(ssh.SSHError, match="connection was lost"):
                await process.wait()
        # The guard saw EOF, and stopped the command.
        await wait_until(lambda: not commands_running(server, "sleep"), within=GRACE + 1)
        assert not await host.is_alive()
        with pytest.raises(ssh.SSHError):
            await host.run_process(["true"])


@pytest.mark.anyio
async def test_remote_sshd_killed_raises_sshError(server: SSHServer) -> None:
    async with connected(server, 2) as host:
        with pytest.raises(ssh.SSHError):
            async with host.open_process(["sh", "-c", "echo started; exec sleep 30"]) as process:
                assert process.stdout is not None
                assert await process.stdout._readline() == b"started\n"
                # The server's process for this connection: sshd, parent of our session.
                with open(f"/proc/{process.pid}/stat") as f:
                    stat = f.read()
                sshd = int(stat[stat.rindex(")") + 2 :].split()[1])
                os.kill(sshd, signal.SIGKILL)
                await process.wait()
        await wait_until(lambda: not commands_running(server, "sleep"), within=GRACE + 1)


# -- faults are clear errors, never prompts ----------------------------------------------


@pytest.mark.anyio
async def test_connect_failures(server: SSHServer, tmp_path: object) -> None:
    directory = str(tmp_path)
    with pytest.raises(ssh.SSHError, match=r"(?i)resolve") as info:
        async with ssh.connect("nosuchhost.invalid", connect_timeout=10):
            pass
    assert info.value.destination == "nosuchhost.invalid"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(ssh.SSHError, match=r"(?i)refused"):
        async with ssh.connect("127.0.0.1", port=closed_port, ssh_options=server.ssh_options()):
            pass
    stranger = os.path.join(directory, "stranger")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", stranger], check=True)
    with pytest.raises(ssh.SSHError, match="Permission denied"):
        async with ssh.connect(
            "sshtest@127.0.0.1",
            port=server.ports[0],
            identity=stranger,
            ssh_options=server.ssh_options(),
        ):
            pass
    empty = os.path.join(directory, "known_hosts")
    open(empty, "w").close()
    with pytest.raises(ssh.SSHError, match=r"(?i)host key verification failed"):
        async with ssh.connect(
            "sshtest@127.0.0.1",
            port=server.ports[0],
            identity=server.identity,
            ssh_options={"UserKnownHostsFile": empty, "StrictHostKeyChecking": "yes"},
        ):
            pass
    with socket.socket() as silent:  # accepts, never speaks: the login times out
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(ssh.SSHError, match=r"(?i)timed out"):
            async with ssh.connect("127.0.0.1", port=silent.getsockname()[1], connect_timeout=1):
                pass


@pytest.mark.anyio
async def test_bad_input(server: SSHServer) -> None:
    with pytest.raises(ValueError, match="destination"):
        async with ssh.connect("-oProxyCommand=evil"):
            pass
    with pytest.raises(ValueError, match="max_sessions"):
        async with ssh.connect("h", max_sessions=0):
            pass
    with pytest.raises(FileNotFoundError, match="no-such-key"):
        async with ssh.connect("h", identity="/no-such-key"):
            pass
    async with connected(server) as host:
        with pytest.raises(ValueError, match="empty"):
            await host.run_process([])
        with pytest.raises(TypeError, match=r"argument 1 .*42"):
            await host.run_process(["echo", 42])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="NUL"):
            await host.run_process(["echo", "a\0b"])
        with pytest.raises(ValueError, match="'BAD-KEY'"):
            await host.run_process(["true"], env={"BAD-KEY": "x"})
        with pytest.raises(FileNotFoundError, match="no-such-program"):
            await host.run_process(["no-such-program"])
        with pytest.raises(FileNotFoundError, match="/no/such/dir"):
            await host.run_process(["true"], cwd="/no/such/dir")
        with pytest.raises(ValueError, match="grace"):
            await host.run_process(["true"], grace=-1)
        # The stdio choices, named as locally; a closed fd before anything starts.
        with pytest.raises(ValueError, match="stdin=STDOUT"):
            await host.run_process(["true"], stdin=subprocess.STDOUT)
        with pytest.raises(TypeError, match="stdout must be"):
            await host.run_process(["true"], stdout="out.txt")  # type: ignore[arg-type]
        closed = 999  # far above what the test opens (a just-closed fd is reused at once)
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(closed)
        for name in ("stdin", "stdout", "stderr"):
            with pytest.raises(OSError, match=f"{name}={closed} is not an open"):
                await host.run_process(["true"], **{name: closed})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="more than ssh takes"):
            await host.run_process(["echo", "x" * 300_000])  # past the master's 256 KiB
        assert not commands_running(server, "true")


# -- sessions, detach, fan_out -----------------------------------------------------------


@pytest.mark.anyio
async def test_max_sessions_queues_instead_of_logging_in_again(server: SSHServer) -> None:
    most = Counter[int]()

    async def watch() -> None:
        while True:
            most.update({0: 0})
            now = commands_running(server, "sleep")[server.ports[0]]
            most[0] = max(most[0], now)
            await anyio.sleep(0.005)

    async with connected(server, max_sessions=3) as host, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with anyio.create_task_group() as runs:
            for _ in range(9):
                runs.start_soon(host.run_process, ["sleep", "0.3"])
        tg.cancel_scope.cancel()
    assert most[0] == 3
    # The default (8, plus the guard: 9 of the server's 10) never meets a refusal.
    async with connected(server) as host, anyio.create_task_group() as runs:
        for _ in range(20):
            runs.start_soon(host.run_process, ["sleep", "0.1"])


@pytest.mark.anyio
async def test_a_refused_session_is_an_error_never_a_fresh_login(server: SSHServer) -> None:
    # max_sessions above the server's MaxSessions (10, one of them the guard's):
    # the master refuses the extra sessions; nothing may log in anew.
    outcomes: list[object] = []

    async def run() -> None:
        try:
            outcomes.append(await host.run_process(["sleep", "2"]))
        except ssh.SSHError as exc:
            outcomes.append(exc)

    async with connected(server, max_sessions=12) as host, anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(run)
    errors = [outcome for outcome in outcomes if isinstance(outcome, ssh.SSHError)]
    assert len(outcomes) == 12
    # At most 9 sessions and the guard's fit in MaxSessions: 3 or more were refused
    # (more if a refused session held its slot while another started).
    assert len(errors) >= 3, outcomes
    assert all("could not be started" in str(error) for error in errors)
    # What the master said: the server refused the session.
    assert all("refused" in str(error) for error in errors), errors


@pytest.mark.anyio
async def test_sessions_at_the_servers_limit_are_never_refused(server: SSHServer) -> None:
    """9 sessions and the guard's: all of the server's 10, each freed and at once asked
    for again, 300 times. sshd may refuse the new one before it has freed the old (both
    packets handled in one round); a refused session ran nothing, and is asked again."""
    async with connected(server, max_sessions=9) as host, anyio.create_task_group() as tg:
        for _ in range(300):
            tg.start_soon(host.run_process, ["true"])


@pytest.mark.anyio
async def test_a_dropped_command_gives_its_session_back(server: SSHServer) -> None:
    """Dropped without aclose(), a command warns (after its cleanup), its fds close, and
    its session slot serves the next command: with 2 slots, 5 dropped commands do not
    leave the host waiting for ever."""
    async with connected(server, max_sessions=2) as host:
        fds = open_fds()
        with anyio.fail_after(20):
            for _ in range(5):
                with pytest.warns(ResourceWarning, match="dropped before it was closed"):
                    process = await host.open_process(["sleep", "30"])
                    del process
                    gc.collect()
            assert (await host.run_process(["echo", "next"])).stdout == b"next\n"
        assert open_fds() == fds
    # the server fixture checks that the dropped commands were stopped with the connection


@pytest.mark.anyio
async def test_no_local_process_runs_for_a_command(server: SSHServer) -> None:
    """Each command is a session asked of the master on its control socket: while
    commands run, no child of ours starts (the master is the connection's only one)."""
    async with connected(server) as host:
        before = set(children_of_us())  # the master, and whatever the test worker had
        assert host._master is not None
        assert host._master.pid in before
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(host.run_process, ["sleep", "0.5"])
            await wait_until(lambda: commands_running(server, "sleep")[server.ports[0]] == 3)
            assert set(children_of_us()) <= before


@pytest.mark.anyio
async def test_detach_outlives_the_connection(server: SSHServer) -> None:
    async with connected(server) as host:
        detached = await host.detach(["sleep", "60"], stdout="/dev/null")
    try:
        time.sleep(GRACE + 0.3)
        cmdline = read_file(f"/proc/{detached.pid}/cmdline")
        assert cmdline.split(b"\0")[:2] == [b"sleep", b"60"]
        assert os.getsid(detached.pid) == detached.pid
    finally:
        os.kill(detached.pid, signal.SIGKILL)
    async with connected(server) as host:
        with pytest.raises(FileNotFoundError, match="no-such-program"):
            await host.detach(["no-such-program"])


@pytest.mark.anyio
async def test_fan_out_respects_limit_and_per_host(server: SSHServer) -> None:
    limit, per_host = 5, 2
    most_total, most_per_host = 0, 0

    async def watch() -> None:
        nonlocal most_total, most_per_host
        while True:
            running = commands_running(server, "sleep")
            most_total = max(most_total, sum(running.values()))
            most_per_host = max(most_per_host, max(running.values(), default=0))
            await anyio.sleep(0.005)

    hosts = server.hosts * 4  # 32 commands over 8 hosts
    seen = Counter[str]()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with ssh.fan_out(
            hosts,
            ["sleep", "0.2"],
            limit=limit,
            per_host=per_host,
            connect_options={"config": server.config, "grace": GRACE},
        ) as results:
            async for host, result in results:
                assert isinstance(result, subprocess.CompletedProcess), result
                assert result.returncode == 0
                seen[str(host)] += 1
        tg.cancel_scope.cancel()
    assert seen == Counter({name: 4 for name in server.hosts})
    assert 0 < most_total <= limit
    assert 0 < most_per_host <= per_host


@pytest.mark.anyio
async def test_fan_out_one_failure_does_not_stop_the_others(server: SSHServer) -> None:
    options = {"config": server.config, "grace": GRACE, "connect_timeout": 10}
    async with connected(server, 3) as connected_host:
        jobs = [
            connected_host,
            (connected_host, "exit 3"),
            "nosuchhost.invalid",
            (server.hosts[4], ["sh", "-c", "echo hi"]),
        ]
        found = {}
        async with ssh.fan_out(jobs, ["true"], connect_options=options) as results:
            async for host, result in results:
                key = (host if isinstance(host, str) else "connected") + str(
                    getattr(result, "returncode", "")
                )
                found[key] = result
        assert set(found) == {
            "connected0",
            "connected3",
            "nosuchhost.invalid",
            server.hosts[4] + "0",
        }
        assert isinstance(found["nosuchhost.invalid"], ssh.SSHError)
        with pytest.raises(subprocess.CalledProcessError):
            async with ssh.fan_out(
                [(connected_host, "exit 4"), (connected_host, "sleep 30")],
                fail_fast=True,
                check=True,
            ) as results:
                async for _ in results:
                    pass
    await wait_until(lambda: not commands_running(server, "sleep"), within=GRACE + 1)
