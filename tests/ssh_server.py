"""A real OpenSSH sshd on 127.0.0.1 for the ssh tests, the ssh benchmark and the docs example.

One sshd listens on several free ports; each port is a "host" for the client,
named ``aioproc-test-0``, ``aioproc-test-1``, ... in an ssh_config written next
to a generated host key, a client key and a known_hosts file. Logins are as the
user ``sshtest`` (a ``/bin/sh`` shell and key-only login, created by ``.ci/run``).

Every remote process of a test carries ``SSH_CONNECTION`` in its environment,
whose fourth field is the server port it came in on: :meth:`SSHServer.remote_processes`
finds ours by that port, so several test workers can share the user.

Run it as a program to start a server and print its ssh_config path (for
trying the docs' example by hand); it runs until interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

SSHD = "/usr/sbin/sshd"
USER = "sshtest"
HOSTS = 8


def sshd_missing() -> str | None:
    """Why there can be no test sshd here, or None if there can."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (Debian: apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "the OpenSSH client (ssh, ssh-keygen) is not installed"
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        return f"the user {USER!r} does not exist (see .ci/run)"
    if os.geteuid() != 0:
        return "the test sshd must start as root, to log in as another user"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SSHServer:
    directory: str
    ports: list[int]
    pid: int  # sshd's, in the background
    config: str  # the client's ssh_config
    identity: str
    known_hosts: str
    hosts: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.hosts[0]

    def ssh_options(self) -> dict[str, str]:
        """What a client needs for the first host without the config file."""
        return {
            "UserKnownHostsFile": self.known_hosts,
            "StrictHostKeyChecking": "yes",
            "IdentitiesOnly": "yes",
        }

    def remote_processes(self, ports: list[int] | None = None) -> dict[int, tuple[int, str]]:
        """The remote user's processes that came in on our ports: pid -> (port, command line)."""
        wanted = {str(port) for port in (ports or self.ports)}
        import pwd

        uid = pwd.getpwnam(USER).pw_uid
        found: dict[int, tuple[int, str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            for item in environ:
                if item.startswith(b"SSH_CONNECTION="):
                    port = item.split(b" ")[-1].decode()
                    if port in wanted:
                        found[int(entry)] = (int(port), cmdline)
        return found

    def wait_no_remote_processes(self, timeout: float = 10.0) -> dict[int, tuple[int, str]]:
        """Wait until none of our remote processes is left; return those still there."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.remote_processes()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.02)

    def kill_remote_processes(self) -> None:
        for pid in self.remote_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def running(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return b"sshd" in f.read()
        except OSError:
            return False

    def stop(self) -> None:
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.running():
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


_ATTEMPTS = 5  # sshd starts on fresh ports at most this many times


class _PortTaken(RuntimeError):
    pass


def start_server(hosts: int = HOSTS) -> SSHServer:
    """Start sshd on ``hosts`` free ports of 127.0.0.1, and wait until each port answers.

    A port found free can be taken by another process (another test worker's sshd)
    before our sshd binds it; sshd then listens on the others only, and the port
    would answer with the other server's key. So a server that could not bind every
    port is stopped, and another started on other ports.
    """
    missing = sshd_missing()
    if missing:
        raise RuntimeError(missing)
    for _ in range(_ATTEMPTS - 1):
        try:
            return _start_server(hosts)
        except _PortTaken:
            continue
    return _start_server(hosts)


def _start_server(hosts: int) -> SSHServer:
    directory = tempfile.mkdtemp(prefix="aioproc-sshd-")
    # sshd reads the authorized keys as the user: let it through the directory.
    os.chmod(directory, 0o755)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    for name in ("host_key", "id"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path(name)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    shutil.copy(path("id.pub"), path("authorized_keys"))
    os.chmod(path("authorized_keys"), 0o644)
    ports = _free_ports(hosts)
    lines = [f"Port {port}" for port in ports]
    lines += [
        "ListenAddress 127.0.0.1",
        f"HostKey {path('host_key')}",
        f"PidFile {path('sshd.pid')}",
        f"AuthorizedKeysFile {path('authorized_keys')}",
        f"AllowUsers {USER}",
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "MaxSessions 10",
        "MaxStartups 100:30:200",
        "LogLevel ERROR",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
    ]
    with open(path("sshd_config"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path("host_key.pub")) as f:
        host_key = " ".join(f.read().split()[:2])
    with open(path("known_hosts"), "w") as f:
        f.writelines(f"[127.0.0.1]:{port} {host_key}\n" for port in ports)
    names = [f"aioproc-test-{index}" for index in range(hosts)]
    config = []
    for name, port in zip(names, ports, strict=True):
        config += [f"Host {name}", "  HostName 127.0.0.1", f"  Port {port}", ""]
    config += [
        "Host *",
        f"  User {USER}",
        f"  IdentityFile {path('id')}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {path('known_hosts')}",
        "  StrictHostKeyChecking yes",
        "  CheckHostIP no",
        "  LogLevel ERROR",
    ]
    with open(path("ssh_config"), "w") as f:
        f.write("\n".join(config) + "\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    # sshd puts itself in the background (no -D): it is then no child of ours,
    # which the per-test leak check would count, and its pid is in the PidFile.
    started = subprocess.run(
        [SSHD, "-f", path("sshd_config"), "-E", path("sshd.log")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if started.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"sshd failed ({started.returncode}): {started.stderr.decode()}")
    deadline = time.monotonic() + 20
    while True:
        try:
            with open(path("sshd.pid")) as f:
                pid = int(f.read())
            break
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError("sshd wrote no PidFile") from None
            time.sleep(0.01)
    with open(path("sshd.log")) as f:
        log = f.read()
    if "Bind to port" in log:  # logged before it went to the background
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)
        raise _PortTaken(log)
    server = SSHServer(
        directory,
        ports,
        pid,
        path("ssh_config"),
        path("id"),
        path("known_hosts"),
        names,
    )
    for port in ports:
        while True:
            if not server.running():
                with open(path("sshd.log")) as f:
                    log = f.read()
                server.stop()
                raise RuntimeError(f"sshd exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"sshd did not answer on port {port}")
            time.sleep(0.02)
    return server


if __name__ == "__main__":
    server = start_server(int(sys.argv[1]) if len(sys.argv) > 1 else HOSTS)
    print(server.config, flush=True)
    try:
        signal.pause()
    finally:
        server.stop()
