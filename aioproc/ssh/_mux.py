"""The client side of OpenSSH's multiplexing protocol: sessions through the master's control socket.

``ssh -S CTL host CMD`` is a whole ssh process that does little but this: it
connects to the master's control socket, asks for a session running CMD, hands
over its stdin, stdout and stderr as file descriptors (``SCM_RIGHTS``), and
waits for the exit status. Doing it ourselves spares that process (its exec,
its libraries, its configuration): about 4 ms of the 6.6 ms a command takes
with it here. The master, OpenSSH's own ``ssh``, still does all of SSH; it
then reads and writes our pipes itself, as it would the client's.

The messages are those of ``PROTOCOL.mux`` in OpenSSH's sources (version 4,
unchanged since OpenSSH 5.x): each is a uint32 length, then a uint32 type and
the body, with SSH's encodings (big-endian uint32; a string is its uint32
length, then its bytes). The master reads a packet to its exact end before it
takes the descriptors that follow it (``channel_post_mux_client_read``), so the
request and the descriptors can be sent at once, without waiting for replies.
"""

from __future__ import annotations

import socket
import struct

import anyio

from .._backends import current_backend
from .._spawn import FdReceiveStream

__all__ = [
    "EXIT_MESSAGE",
    "FAILURES",
    "SESSION_OPENED",
    "Replies",
    "alive",
    "new_session",
    "string",
    "u32",
]

VERSION = 4
HELLO = 0x00000001
NEW_SESSION = 0x10000002
ALIVE_CHECK = 0x10000004
PERMISSION_DENIED = 0x80000002
FAILURE = 0x80000003
EXIT_MESSAGE = 0x80000004
ALIVE = 0x80000005
SESSION_OPENED = 0x80000006
FAILURES = (PERMISSION_DENIED, FAILURE)
_NO_ESCAPE = 0xFFFFFFFF
_MAX_PACKET = 256 * 1024  # the master drops a connection that sends more (CHANNEL_MUX_MAX_PACKET)
_U32 = struct.Struct(">I")


def _packet(kind: int, *fields: int | bytes) -> bytes:
    body = bytearray(_U32.pack(kind))
    for field in fields:
        if isinstance(field, int):
            body += _U32.pack(field)
        else:
            body += _U32.pack(len(field)) + field
    return _U32.pack(len(body)) + bytes(body)


def _connect(control: str) -> socket.socket:
    """Connect to the control socket. A listening Unix socket queues the connection at
    once (the master's backlog is 64, and we open at most ``max_sessions`` at a time),
    so this does not wait for the master."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(control)
    except FileNotFoundError as exc:  # no socket: no master
        sock.close()
        raise ConnectionRefusedError(f"no control socket at {control}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def new_session(control: str, command: str, stdio: tuple[int, int, int]) -> int:
    """Ask the master for a session running ``command`` on these stdin, stdout and stderr.

    Returns the connection's fd, on which :class:`Replies` reads the outcome;
    closing it ends the session (as killing ``ssh -S`` does). Raises
    ConnectionError if the master is not there, ValueError if the command is too
    long for it.
    """
    request = _packet(HELLO, VERSION) + _packet(
        NEW_SESSION,
        1,  # request id
        b"",  # reserved
        0,  # want a tty
        0,  # X11 forwarding
        0,  # agent forwarding
        0,  # subsystem
        _NO_ESCAPE,
        b"",  # terminal type
        command.encode(),
    )
    if len(request) > _MAX_PACKET:
        raise ValueError(
            f"the remote command line is {len(request)} bytes, more than ssh takes ({_MAX_PACKET})"
        )
    sock = _connect(control)
    try:
        # A few hundred bytes into an empty socket buffer: these never wait.
        sock.sendall(request)
        for fd in stdio:
            socket.send_fds(sock, [b"\0"], [fd])
    except BaseException:
        sock.close()
        raise
    return sock.detach()


class Replies:
    """The master's replies on one control connection, one packet at a time."""

    def __init__(self, stream: FdReceiveStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def next(self) -> tuple[int, bytes] | None:
        """The next reply as (type, body), or None at EOF (the session is over)."""
        buffer = self._buffer
        while True:
            if len(buffer) >= 8:
                (length,) = _U32.unpack_from(buffer)
                if len(buffer) >= 4 + length:
                    (kind,) = _U32.unpack_from(buffer, 4)
                    body = bytes(buffer[8 : 4 + length])
                    del buffer[: 4 + length]
                    return kind, body
            try:
                buffer += await self.stream.receive()
            except anyio.EndOfStream:
                return None


def u32(body: bytes, offset: int) -> int:
    return int(_U32.unpack_from(body, offset)[0])


def string(body: bytes, offset: int) -> str:
    length = u32(body, offset)
    return body[offset + 4 : offset + 4 + length].decode(errors="replace")


async def alive(control: str) -> bool:
    """Whether the master answers on its control socket (what ``ssh -O check`` asks)."""
    try:
        sock = _connect(control)
    except OSError:
        return False
    try:
        sock.sendall(_packet(HELLO, VERSION) + _packet(ALIVE_CHECK, 1))
    except OSError:
        sock.close()
        return False
    stream = FdReceiveStream(sock.detach(), current_backend())
    try:
        replies = Replies(stream)
        while (reply := await replies.next()) is not None:
            if reply[0] == ALIVE:
                return True
        return False
    except (anyio.BrokenResourceError, OSError):
        return False
    finally:
        stream.close()
