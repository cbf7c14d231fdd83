"""The one exception of the ssh wing."""

from __future__ import annotations

__all__ = ["SSHError"]


class SSHError(Exception):
    """ssh could not connect, or lost the connection: not an exit status of the remote command.

    ``destination`` is the host as given to :func:`aioproc.ssh.connect`, and
    ``stderr`` what ``ssh`` said (possibly empty).
    """

    def __init__(self, destination: str, message: str, stderr: str = "") -> None:
        self.destination = destination
        self.message = message
        self.stderr = stderr.strip()
        text = f"{destination}: {message}"
        if self.stderr:
            text += f" (ssh said: {self.stderr})"
        super().__init__(text)
