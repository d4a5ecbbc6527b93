"""A local server a test starts from a deploy/*/run.sh: the broker (broker.py) and the issuer (issuer.py).

The server runs in the foreground as a child process on a free loopback port with its own temporary
folder (``runtime_dir`` below it); its whole log (stdout and stderr) is captured to ``log_path``. A
subclass says how it is started (``_command``) and when it serves (``_ready``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class ServerStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    host = "127.0.0.1"
    #: For messages: "<name> exited with 1", "<name> <not_ready> on <port> after 30s".
    name = "server"
    not_ready = "not answering"
    start_error: type[ServerStartError] = ServerStartError
    #: How often a start looks at the log and the port.
    poll_interval = 0.05

    def __init__(self, *, prefix: str, log_name: str, start_timeout: float) -> None:
        self._own_dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.base_dir = Path(self._own_dir.name)
        self.runtime_dir = self.base_dir / "runtime"
        self.start_timeout = start_timeout
        self.port = 0
        self.log_path = self.base_dir / log_name
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """True once the server serves on ``self.port`` (its log shows the port is its own)."""
        raise NotImplementedError

    def log_lines(self) -> list[str]:
        """Every line the server (and run.sh) logged so far."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def start(self) -> Self:
        # A free port can be taken between our probe and the server's bind: try a few.
        last_error: ServerStartError | None = None
        for _attempt in range(3):
            self.port = free_port()
            try:
                self._start_once()
                return self
            except ServerStartError as exc:
                last_error = exc
                self.stop()
        assert last_error is not None
        raise last_error

    def _start_once(self) -> None:
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self.start_error(
                    f"{self.name} exited with {self._process.returncode}:\n"
                    + "\n".join(self.log_lines()[-20:])
                )
            if self._ready():
                return
            time.sleep(self.poll_interval)
        raise self.start_error(
            f"{self.name} {self.not_ready} on {self.port} after {self.start_timeout}s:\n"
            + "\n".join(self.log_lines()[-20:])
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._own_dir.cleanup()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["LocalServer", "ServerStartError", "free_port"]
