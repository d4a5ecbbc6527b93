"""A Modbus TCP peer that answers as scripted: correctly by default, or with a crafted fault per request.

Used where a real pymodbus server cannot misbehave on demand: the fuzz test scripts exceptions, short
frames, wrong byte counts, NaN/infinity registers and garbage; the soak stops and restarts it on the same
port (a dead slave).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    """How the peer answers one request: ``kind`` and its argument."""

    kind: str
    arg: Any = None


@dataclass
class BadModbusPeer:
    """Speaks just enough Modbus TCP to be polled, then answers each request as the next ``Answer`` says.

    With nothing scripted it answers correctly (registers 0x4120 = 10.0 as float32), so the driver also
    sees recoveries between the faults.
    """

    script: deque[Answer] = field(default_factory=deque)
    requests: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> BadModbusPeer:
        """Listens on ``port`` (a free one at first): restarted, the peer is where the gateway expects it."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening and drops every connection, as a slave that loses power."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    def feed(self, answers: list[Answer]) -> None:
        # Bounded: if the gateway polls slower than hypothesis feeds, the oldest script is forgotten.
        with self._lock:
            self.script.extend(answers)
            while len(self.script) > 200:
                self.script.popleft()

    def _next(self) -> Answer:
        with self._lock:
            return self.script.popleft() if self.script else Answer("ok")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack("!HHHB", header)
                pdu = await reader.readexactly(max(length - 1, 0))
                self.requests += 1
                answer = self._next()
                reply = self._reply(tid, unit, pdu, answer)
                if reply is None:
                    if answer.kind == "close":
                        return
                    continue  # silence: the driver times out
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _frame(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
        return struct.pack("!HHHB", tid, 0, len(pdu) + 1 if length is None else length, unit) + pdu

    def _reply(self, tid: int, unit: int, pdu: bytes, answer: Answer) -> bytes | None:
        fc = pdu[0] if pdu else 0
        count = struct.unpack("!H", pdu[3:5])[0] if len(pdu) >= 5 else 1
        if fc in (1, 2):
            data = bytes((count + 7) // 8)
        elif fc in (5, 6, 15, 16):
            data = b""
        else:
            data = b"\x41\x20\x00\x00" * (count // 2) + b"\x00\x00" * (count % 2)
        good = bytes([fc]) + (pdu[1:5] if fc in (5, 6, 15, 16) else bytes([len(data)]) + data)
        kind, arg = answer.kind, answer.arg
        if kind == "ok":
            return self._frame(tid, unit, good)
        if kind == "registers":  # arbitrary register contents: NaN, infinities, huge values, text bytes
            body = (bytes(arg) * (len(data) // max(len(arg), 1) + 1))[: len(data)] if arg else data
            return self._frame(tid, unit, bytes([fc, len(body)]) + body)
        if kind == "exception":
            return self._frame(tid, unit, bytes([(fc | 0x80) & 0xFF, arg]))
        if kind == "short":
            return self._frame(tid, unit, good)[: max(arg, 0)]
        if kind == "byte_count":
            return self._frame(tid, unit, bytes([fc, arg & 0xFF]) + data)
        if kind == "length":
            return self._frame(tid, unit, good, length=arg)
        if kind == "tid":
            return self._frame((tid + arg) & 0xFFFF, unit, good)
        if kind == "fc":
            return self._frame(tid, unit, bytes([arg]) + good[1:])
        if kind == "unit":
            return self._frame(tid, arg, good)
        if kind == "garbage":
            return bytes(arg)
        return None  # "silence" and "close"
