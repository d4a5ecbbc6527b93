"""The sd_notify protocol with the standard library: one datagram per state change to ``$NOTIFY_SOCKET``.

Without ``NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call is a no-op, so the same
code runs in a terminal. Abstract socket names (``@name``) are supported as systemd documents them.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("fieldgate.service")


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1`` to the service manager."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        self._socket: socket.socket | None = None
        self._failed = False
        if address:
            # "@name" is an abstract socket: the leading '@' stands for the NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A datagram to a local socket never blocks for long, but the loop must not wait at all.
            self._socket.setblocking(False)
        #: Seconds between watchdog pings (half of WatchdogSec), or None when no watchdog is asked for.
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is meant for: a child that inherited it must not ping.
        if pid is None or pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                usec = None
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines. False (and a log line once) when it cannot be sent."""
        if self._socket is None or self._address is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at %s: %s", self._shown, exc.strerror)
            return False
        if self._failed:
            self._failed = False
            log.info("notifying the service manager again")
        return True

    @property
    def _shown(self) -> str:
        address = self._address
        if isinstance(address, str) and address.startswith("\0"):
            return "@" + address[1:]
        return str(address)

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={status}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={status}")
        return self.send(*fields)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
