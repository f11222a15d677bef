"""The systemd notify protocol (sd_notify(3)), without libsystemd.

Under ``Type=notify`` systemd passes the path of a unix datagram socket in
``NOTIFY_SOCKET`` (a leading ``@`` means an abstract socket) and, with
``WatchdogSec=``, the watchdog period in ``WATCHDOG_USEC``. The daemon sends
newline-separated ``KEY=VALUE`` datagrams: ``READY=1`` once it serves,
``WATCHDOG=1`` at least every half period, ``STOPPING=1`` when it shuts down,
``STATUS=...`` for ``systemctl status``.

Notification is best effort: a failed send is logged once and never raised
into the caller, so a broken notify socket cannot take the sidecar down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("mlsidecar.sdnotify")

DEFAULT_WATCHDOG_INTERVAL = 10.0


class Notifier:
    """Sends sd_notify messages to one socket address."""

    def __init__(self, address: str, watchdog_usec: int | None = None, watchdog_pid: int | None = None):
        self.address = address
        self._target: str | bytes = ("\0" + address[1:]) if address.startswith("@") else address
        if watchdog_usec and watchdog_usec > 0:
            self.watchdog_interval = watchdog_usec / 1e6 / 2
        else:
            self.watchdog_interval = DEFAULT_WATCHDOG_INTERVAL
        self.watchdog_enabled = bool(watchdog_usec and watchdog_usec > 0)
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ=None) -> Notifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or None when not started by systemd's Type=notify.

        ``WATCHDOG_PID``, when set, must be our pid: the watchdog is meant for another
        process otherwise (systemd's own rule), and the interval falls back to the default.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith("/") or address.startswith("@")):
            return None
        usec = None
        raw = env.get("WATCHDOG_USEC", "")
        try:
            usec = int(raw) if raw else None
        except ValueError:
            usec = None
        pid = env.get("WATCHDOG_PID", "")
        if usec and pid.isdigit() and int(pid) != os.getpid():
            usec = None
        return cls(address, usec)

    # --- messages ---------------------------------------------------------------
    def ready(self) -> bool:
        return self.send("READY=1", "STATUS=serving")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + " ".join(str(text).split()))

    def send(self, *lines: str) -> bool:
        """Send one datagram; True when it went out. Never raises."""
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._target)
            return True
        except Exception as exc:  # noqa: BLE001 - best effort by contract
            if not self._warned:
                log.warning("sd_notify to %s failed: %s (further failures not logged)", self.address, exc)
                self._warned = True
            self.close()
            return False

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __repr__(self) -> str:
        return f"Notifier({self.address!r}, watchdog_interval={self.watchdog_interval})"
