"""A TCP gate between the gateway and the broker, which the test opens and closes.

    gate = await Gate(broker).start()      # the gateway's [uplink] port is gate.port
    gate.cut()                             # a dead link: connections dropped, new ones refused
    gate.open = True                       # the link is back
    await gate.close()

Each connection through the gate goes to the broker's current host and port, so a broker stopped and
started on a new port is followed. While the gate is closed the gateway cannot reconnect: a test uses that
to have its independent subscriber subscribed again, after a broker restart, before the gateway is let in
(mosquitto here keeps no sessions across a restart).
"""

from __future__ import annotations

import asyncio

from tests.support.broker import LocalBroker


class Gate:
    """A TCP forwarder between gateway and broker that the test opens and closes."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.open = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> Gate:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()
                # Both directions end together (a cut drops the whole connection).
                for other in (writer, up_writer):
                    other.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    def cut(self) -> None:
        """Close the gate and drop the connections through it (as a dead broker or link would)."""
        self.open = False
        for task in list(self._pipes):
            task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
