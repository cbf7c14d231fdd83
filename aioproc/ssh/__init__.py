"""Remote hosts over OpenSSH: the same :class:`~aioproc.Process` API on other machines.

``aioproc.ssh`` drives the system ``ssh`` client (OpenSSH does all of SSH),
and runs on asyncio, uvloop and trio alike:

* :func:`connect` opens one master connection per host (OpenSSH's
  ControlMaster), our own child that dies with us, and yields a :class:`Host`;
* :meth:`Host.open_process`, :meth:`Host.run_process` and :meth:`Host.detach`
  run commands through it, each a session asked of the master on its control
  socket with our pipes; the first two give a :class:`RemoteProcess`, whose
  signals and stop sequence reach the remote process group through a small
  ``sh`` guard that also stops everything when the connection ends;
* :func:`fan_out` runs one command on many hosts, within limits, yielding the
  results as they complete.

Read top-down: ``_host`` (connect, Host), ``_process`` (RemoteProcess),
``_mux`` (OpenSSH's multiplexing protocol, the client's side), ``_scripts``
(the remote ``sh`` text: guard and wrapper), ``_fan_out``, ``_errors``. It
stands on the spawn wing (``open_process`` for the master, the ``Process``
base, the fd streams) and uses nothing else of aioproc's.
"""

from __future__ import annotations

from ._errors import SSHError
from ._fan_out import FanOut, fan_out
from ._host import Host, RemoteDetached, connect
from ._process import RemoteProcess, RemoteProcessOpener

__all__ = [
    "FanOut",
    "Host",
    "RemoteDetached",
    "RemoteProcess",
    "RemoteProcessOpener",
    "SSHError",
    "connect",
    "fan_out",
]
