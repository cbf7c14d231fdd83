"""The remote side, as POSIX ``sh`` text: the guard, and the wrapper of each command.

Everything that crosses to the remote host is a shell command line that the
remote login shell parses once more, so every argument, ``cwd`` and ``env``
value is quoted with :func:`shlex.quote`.

The guard runs as the master connection's own session. It makes a private
directory, says ``aioproc-ready DIR`` on stdout, then reads ``SIGNAL PGID``
lines on stdin and signals those process groups. Each command's wrapper appends
its process group id (every ssh session leads its own: pid == pgid == sid) to
``DIR/g`` before it does anything else, so the guard knows every group even if
we never learn of it. When the guard's stdin hits EOF (we closed the
connection, we died, or the connection dropped) it sends SIGTERM to every group
it knows, waits up to ``grace`` seconds while any is left, then sends SIGKILL.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence

__all__ = ["READY", "guard_script", "quote_command", "wrapper_script"]

READY = "aioproc-ready "
PGID = b"aioproc-pgid "
ERROR = b"aioproc-error "

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def guard_script(grace: float) -> str:
    tenths = max(0, math.ceil(grace * 10))
    return (
        "trap '' HUP PIPE INT; "
        'd=$(mktemp -d "${TMPDIR:-/tmp}/aioproc.XXXXXX") || exit 1; '
        ': > "$d/g"; '
        f'echo "{READY}$d"; '
        "while read -r s g; do "
        'case $s$g in *[!0-9]*) ;; *) kill -"$s" -"$g" 2>/dev/null;; esac; '
        "done; "
        'gs=$(cat "$d/g"); '
        'for g in $gs; do kill -TERM -"$g" 2>/dev/null; done; '
        "n=0; "
        f'while [ "$n" -lt {tenths} ]; do '
        "a=; "
        'for g in $gs; do kill -0 -"$g" 2>/dev/null && a=1 && break; done; '
        '[ -z "$a" ] && break; '
        "sleep 0.1 2>/dev/null || sleep 1; "
        "n=$((n+1)); "
        "done; "
        'for g in $gs; do kill -KILL -"$g" 2>/dev/null; done; '
        'rm -rf "$d"'
    )


def _text(what: str, value: object) -> str:
    if isinstance(value, (str, bytes, os.PathLike)):
        text = os.fsdecode(value)
        if "\0" in text:
            raise ValueError(f"{what} contains a NUL byte: {value!r}")
        return text
    raise TypeError(f"{what} must be a str, bytes or a path, not {value!r}")


def quote_command(command: object) -> tuple[str, str | None]:
    """The remote command line for ``command``, and the program to look up (None for a str).

    A str (or bytes, or path) runs through the remote ``/bin/sh -c``, as
    locally; a sequence runs directly, each argument quoted.
    """
    if isinstance(command, (str, bytes, os.PathLike)):
        text = _text("the command", command)
        if not text:
            raise ValueError("the command is empty")
        return "/bin/sh -c " + shlex.quote(text), None
    if not isinstance(command, Sequence):
        raise TypeError(f"the command must be a str or a sequence of arguments, not {command!r}")
    args = [_text(f"argument {index} of the command", arg) for index, arg in enumerate(command)]
    if not args:
        raise ValueError("the command is empty")
    if not args[0]:
        raise ValueError("the program name (argument 0 of the command) is empty")
    return " ".join(map(shlex.quote, args)), args[0]


def check_env(env: object) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {env!r}")
    checked = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _NAME.match(key):
            raise ValueError(f"env key {key!r} is not a shell variable name (letters, digits, _)")
        if not isinstance(value, str):
            raise TypeError(f"env value for {key!r} must be a str, not {value!r}")
        if "\0" in value:
            raise ValueError(f"env value for {key!r} contains a NUL byte")
        checked[key] = value
    return checked


def prelude(cwd: object | None, env: Mapping[str, str] | None) -> str:
    """``cd`` and ``export`` for a remote command; a failed ``cd`` says so and exits 1."""
    parts = []
    if cwd is not None:
        directory = _text("cwd", cwd)
        parts.append(
            f"cd -- {shlex.quote(directory)} 2>/dev/null || "
            f"{{ echo '{ERROR.decode()}cwd' >&2; exit 1; }}; "
        )
    for key, value in (env or {}).items():
        parts.append(f"export {key}={shlex.quote(value)}; ")
    return "".join(parts)


def wrapper_script(
    command_line: str,
    program: str | None,
    *,
    guard_dir: str,
    cwd: object | None,
    env: Mapping[str, str] | None,
    stderr: str,
) -> str:
    """The remote command line that registers with the guard, reports its pgid, then execs.

    ``stderr`` is a redirection applied after the report (``2>/dev/null``,
    ``2>&1``) or empty.
    """
    check = ""
    if program is not None:
        check = (
            f"command -v -- {shlex.quote(program)} >/dev/null 2>&1 || "
            f"{{ echo '{ERROR.decode()}program' >&2; exit 127; }}; "
        )
    redirect = f"exec {stderr}; " if stderr else ""
    return (
        f"echo $$ >> {shlex.quote(guard_dir + '/g')}; "
        + prelude(cwd, env)
        + check
        + f"echo {PGID.decode()}$$ >&2; "
        + redirect
        + "exec "
        + command_line
    )
