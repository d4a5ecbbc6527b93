"""A fieldgate process under test: started with a config, its output lines collected as they come."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class GatewayProcess:
    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.args = list(args)
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout, self.stdout)),
            asyncio.create_task(self._read(self.proc.stderr, self.stderr)),
        ]
        return self

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()

    async def wait_for(
        self,
        predicate: Callable[[str], bool],
        *,
        stream: str = "stdout",
        timeout: float = 10.0,
        start: int = 0,
    ) -> str:
        """The first line (from index ``start``) matching ``predicate``; fails after ``timeout``."""
        lines = self.stdout if stream == "stdout" else self.stderr
        async with asyncio.timeout(timeout):
            index = start
            while True:
                while index < len(lines):
                    if predicate(lines[index]):
                        return lines[index]
                    index += 1
                self._changed.clear()
                await self._changed.wait()

    def tracebacks(self) -> str:
        """Every traceback the process wrote to stderr, with the line before it (empty: none)."""
        lines = self.stderr
        shown = [
            "\n".join(lines[max(0, i - 1) : i + 30]) for i, line in enumerate(lines) if "Traceback" in line
        ]
        return "\n---\n".join(shown)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
