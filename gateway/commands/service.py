"""Cloud-to-device commands: parse, check, queue per device, run through the driver, respond.

    uplink --on_message--> CommandService.on_message --accepted--> per-device queue --> worker
        (PUBACK after it returns)   |-- malformed / expired / busy / duplicate: answered at once
                                                      worker --> driver (its bus queue) --> response

* ``on_message`` runs on the loop, synchronously, before paho acknowledges the PUBLISH: it parses the
  payload (size-capped, strict JSON), and either answers at once (refused) or accepts the command into
  the device's bounded queue. Nothing in it raises, whatever the payload.
* One worker task per device executes its commands one at a time; a driver's own bus queue keeps them
  from colliding with polling. Each command has a timeout; on timeout, a request still waiting for the
  bus is withdrawn (the driver's queue skips cancelled requests).
* Duplicates: a command with Correlation Data is remembered (topic + correlation data, bounded LRU); a
  redelivery of a finished one gets the same response again, of a running or queued one nothing; it is
  executed once. Without Correlation Data there is no way to tell a redelivery from a new command.
* Expiry: the MQTT Message Expiry Interval (what the broker forwarded, counted from arrival) and an
  optional ``"expires_at"`` (Unix seconds) in the JSON; checked at arrival and again just before the
  command runs, so a command is never executed late.
* Responses go to the request's Response Topic with its Correlation Data through a bounded queue
  (drop-oldest, counted); the permission gate refuses a response topic the token does not grant.
  A Response Topic must match the device's ``[commands] response_topic`` filter (default
  ``sites/{site}/{gateway}/{device}/responses/#``) and must not be one of the gateway's own topics
  (telemetry, birth, will, commands): otherwise the request is refused unexecuted and unanswered
  (counted ``response_topic_refused``, logged once per episode), so a requester cannot make the gateway
  publish onto its own topics.

The handler never imports a driver: drivers that take commands implement :class:`gateway.model.Commandable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.commands.parse import (
    Malformed,
    Outcome,
    ReadPoints,
    Request,
    WritePoint,
    parse_command,
    response_payload,
)
from gateway.config.commands import CommandsConfig
from gateway.errors import CommandRefused, DriverError
from gateway.model import (
    Commandable,
    CommandReply,
    CommandTransport,
    DeviceInfo,
    InboundMessage,
    PublishOutcome,
)
from gateway.mqtt_topics import topic_matches

log = logging.getLogger("fieldgate.commands")

#: Responses waiting for the uplink; beyond it the oldest waiting response is dropped (counted).
RESPONSE_QUEUE = 256
#: Attempts to deliver a response whose connection dropped before its PUBACK.
RESPONSE_ATTEMPTS = 3


# -- the service ------------------------------------------------------------------------------------
@dataclass(slots=True)
class CommandCounters:
    received: int = 0
    done: int = 0
    refused: int = 0
    failed: int = 0
    #: Redeliveries (same topic and correlation data) not executed again.
    duplicates: int = 0
    expired: int = 0
    #: Refused because the device's queue was full.
    busy: int = 0
    malformed: int = 0
    responses_sent: int = 0
    #: Responses not delivered: dropped from a full response queue, refused (topic not granted), lost.
    responses_dropped: int = 0
    #: Commands executed without a response topic (outcome only logged).
    unanswered: int = 0
    #: Requests refused unread because their Response Topic is outside the device's response topics.
    response_topic_refused: int = 0
    #: Commands whose handling failed unexpectedly (a bug met by that command): dropped, not retried.
    set_aside: int = 0


@dataclass(eq=False, slots=True)
class _Job:
    device: str
    request: Request
    message: InboundMessage
    key: bytes | None
    #: ``time.monotonic()`` after which it must not run (Message Expiry), or None.
    deadline: float | None


@dataclass(eq=False, slots=True)
class _Response:
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass(slots=True)
class _DeviceQueue:
    jobs: deque[_Job] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def _correlation_text(data: bytes | None) -> str:
    if data is None:
        return "no correlation data"
    shown = data[:16].hex()
    return f"correlation {shown}{'...' if len(data) > 16 else ''}"


class CommandService:
    """Takes commands from a :class:`CommandTransport` and runs them on :class:`Commandable` drivers."""

    def __init__(
        self,
        config: CommandsConfig,
        *,
        gateway_id: str,
        site: str,
        devices: Iterable[DeviceInfo],
        transport: CommandTransport,
        own_topic: Callable[[str], bool] = lambda topic: False,
    ) -> None:
        self.config = config
        self.counters = CommandCounters()
        self._transport = transport
        wanted = set(config.devices)
        self._filters: dict[str, str] = {}
        self._response_filters: dict[str, str] = {}
        self._own_topic = own_topic
        self._refusing_responses = False
        for info in devices:
            if wanted and info.name not in wanted:
                continue
            topic_filter = config.command_filter(
                gateway=gateway_id, site=site, device=info.name, driver=info.driver
            )
            self._filters[info.name] = topic_filter
            self._response_filters[info.name] = config.response_filter(
                gateway=gateway_id, site=site, device=info.name, driver=info.driver
            )
        self._targets: dict[str, Commandable] = {}
        self._subscribed: set[str] = set()
        self._queues: dict[str, _DeviceQueue] = {name: _DeviceQueue() for name in self._filters}
        self._seen: OrderedDict[bytes, bytes | None] = OrderedDict()
        self._responses: deque[_Response] = deque()
        self._response_ready = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}

    # -- wiring (the app) ---------------------------------------------------------------------------
    @property
    def filters(self) -> Mapping[str, str]:
        """Device -> its command topic filter (for every device that may take commands)."""
        return dict(self._filters)

    def attach(self, driver: object) -> list[str]:
        """Route commands for the devices of a running driver to it (and subscribe their topics).

        Returns the devices attached; a driver that does not take commands attaches none."""
        if not isinstance(driver, Commandable):
            return []
        attached = []
        for device in driver.command_devices:
            if device not in self._filters:
                continue
            self._targets[device] = driver
            attached.append(device)
            if device not in self._subscribed:
                self._subscribed.add(device)
                topic_filter = self._filters[device]
                log.info("device %s: takes commands on %r", device, topic_filter)
                self._transport.subscribe([topic_filter], self.on_message)
        return attached

    def detach(self, driver: object) -> None:
        """The driver stops (reload): its devices' commands are refused until it is attached again."""
        for device, target in list(self._targets.items()):
            if target is driver:
                del self._targets[device]

    async def run(self) -> None:
        """The device workers and the responder; runs until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for device in self._queues:
                    self._workers[device] = tg.create_task(self._worker(device), name=f"commands[{device}]")
                tg.create_task(self._responder(), name="commands.respond")
                await asyncio.Event().wait()
            finally:
                self._tg = None

    # -- inbound: runs before the PUBACK; must never raise -------------------------------------------
    def on_message(self, message: InboundMessage) -> None:
        self.counters.received += 1
        try:
            self._accept(message)
        except Exception:
            # A bug, not a payload problem: the payload parser raises nothing but Malformed. Keep the
            # session alive (an exception here would end the MQTT connection) and say what happened.
            log.exception("command on %r could not be handled", message.topic)

    def _device_of(self, topic: str) -> str | None:
        for device, topic_filter in self._filters.items():
            if topic_matches(topic_filter, topic):
                return device
        return None

    def _response_allowed(self, device: str | None, topic: str) -> bool:
        if device is None:
            return False
        if not topic_matches(self._response_filters[device], topic):
            return False
        if self._own_topic(topic):
            return False
        return not any(topic_matches(f, topic) for f in self._filters.values())

    def _accept(self, message: InboundMessage) -> None:
        device = self._device_of(message.topic)
        if message.response_topic and not self._response_allowed(device, message.response_topic):
            self.counters.refused += 1
            self.counters.response_topic_refused += 1
            level = logging.DEBUG if self._refusing_responses else logging.WARNING
            self._refusing_responses = True
            log.log(
                level,
                "command on %r refused unexecuted: its response topic %r is not under %r or is one of the"
                " gateway's own topics (%d refused so far)",
                message.topic,
                message.response_topic[:200],
                self._response_filters.get(device or "", "no device"),
                self.counters.response_topic_refused,
            )
            return
        if message.response_topic and self._refusing_responses:
            self._refusing_responses = False
            log.info("commands with allowed response topics again")
        key: bytes | None = None
        if message.correlation_data is not None:
            key = message.topic.encode("utf-8", "surrogateescape") + b"\0" + message.correlation_data
            if key in self._seen:
                self._duplicate(message, key)
                return
        try:
            request = parse_command(message.payload, self.config.max_payload)
        except Malformed as exc:
            self.counters.malformed += 1
            excerpt = message.payload[:48]
            more = f" (+{len(message.payload) - 48} bytes)" if len(message.payload) > 48 else ""
            self._finish(
                device,
                None,
                message,
                key,
                Outcome("refused", "malformed", str(exc)),
                what=f"payload {excerpt!r}{more}",
            )
            return
        if device is None:
            self._finish(
                device,
                request,
                message,
                key,
                Outcome("refused", "unknown-device", "no device takes this topic"),
            )
            return
        deadline = None
        if message.message_expiry is not None:
            deadline = message.received_at + message.message_expiry
        job = _Job(device, request, message, key, deadline)
        if self._expired(job):
            return
        queue = self._queues[device]
        if len(queue.jobs) >= self.config.queue:
            self.counters.busy += 1
            self._finish(
                device,
                request,
                message,
                key,
                Outcome("refused", "busy", f"{self.config.queue} commands are already waiting for {device}"),
            )
            return
        if key is not None:
            self._remember(key, None)
        queue.jobs.append(job)
        queue.ready.set()
        log.debug(
            "command for %s from %r accepted (%s), %d waiting: %s",
            device,
            message.topic,
            _correlation_text(message.correlation_data),
            len(queue.jobs),
            request.command.describe(),
        )

    def _expired(self, job: _Job) -> bool:
        """Refuse (answering) a command whose expiry passed; True when it did."""
        now = time.monotonic()
        why = None
        if job.deadline is not None and now >= job.deadline:
            why = f"message expiry interval ({job.message.message_expiry} s) passed before it could run"
        elif job.request.expires_at is not None and time.time() >= job.request.expires_at:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(job.request.expires_at))
            why = f"expires_at {when} passed before it could run"
        if why is None:
            return False
        self.counters.expired += 1
        self._finish(job.device, job.request, job.message, job.key, Outcome("refused", "expired", why))
        return True

    def _duplicate(self, message: InboundMessage, key: bytes) -> None:
        self.counters.duplicates += 1
        self._seen.move_to_end(key)
        response = self._seen[key]
        state = "finished: its response is sent again" if response is not None else "still queued or running"
        log.info(
            "command on %r (%s) is a redelivery, not executed again (%s)",
            message.topic,
            _correlation_text(message.correlation_data),
            state,
        )
        if response is not None and message.response_topic:
            self._queue_response(_Response(message.response_topic, response, message.correlation_data))

    def _remember(self, key: bytes, response: bytes | None) -> None:
        self._seen[key] = response
        self._seen.move_to_end(key)
        while len(self._seen) > self.config.dedup:
            self._seen.popitem(last=False)

    # -- execution ----------------------------------------------------------------------------------
    async def _worker(self, device: str) -> None:
        queue = self._queues[device]
        while True:
            while not queue.jobs:
                queue.ready.clear()
                await queue.ready.wait()
            job = queue.jobs.popleft()
            try:
                if self._expired(job):
                    continue
                started = time.monotonic()
                outcome = await self._execute(job)
                self._finish(
                    job.device, job.request, job.message, job.key, outcome, took=time.monotonic() - started
                )
            except Exception:
                # A bug met by this command: set it aside (no retry) and keep the device's worker going.
                self.counters.set_aside += 1
                log.exception(
                    "%s: command %s set aside: handling it failed unexpectedly (%d set aside so far)",
                    job.device,
                    job.request.command.describe(),
                    self.counters.set_aside,
                )

    async def _execute(self, job: _Job) -> Outcome:
        driver = self._targets.get(job.device)
        if driver is None:
            return Outcome("failed", "not-running", f"the driver of {job.device} is not running")
        cmd = job.request.command
        timeout = self.config.timeout
        if job.deadline is not None:
            timeout = min(timeout, max(0.0, job.deadline - time.monotonic()))
        try:
            async with asyncio.timeout(timeout):
                if isinstance(cmd, WritePoint):
                    back = await driver.write_point(job.device, cmd.point, cmd.value)
                    return Outcome("done", readings=(back,))
                if isinstance(cmd, ReadPoints):
                    readings = await driver.read_points(job.device, cmd.points)
                    return Outcome("done", readings=tuple(readings))
                reply: CommandReply = await driver.send_command(job.device, cmd.command)
                return Outcome("done", readings=reply.readings, reply=reply.reply)
        except CommandRefused as exc:
            return Outcome("refused", exc.code, exc.detail)
        except TimeoutError:
            what = "the write may or may not have been applied" if isinstance(cmd, WritePoint) else ""
            detail = f"no outcome within {timeout:g} s" + (f"; {what}" if what else "")
            return Outcome("failed", "timeout", detail)
        except DriverError as exc:
            return Outcome("failed", "device-error", exc.detail)
        except KeyError as exc:  # a driver that raises the builtin, not CommandRefused
            return Outcome("refused", "unknown-point", str(exc.args[0]) if exc.args else "unknown")
        except ValueError as exc:
            return Outcome("refused", "invalid-value", str(exc))
        except Exception:
            # A driver bug must not stop this device's commands (nor the gateway): answer and go on.
            log.exception("%s: command %s failed unexpectedly", job.device, cmd.describe())
            return Outcome("failed", "internal-error", "the driver failed unexpectedly (see the gateway log)")

    def _finish(
        self,
        device: str | None,
        request: Request | None,
        message: InboundMessage,
        key: bytes | None,
        outcome: Outcome,
        *,
        what: str | None = None,
        took: float | None = None,
    ) -> None:
        if outcome.status == "done":
            self.counters.done += 1
        elif outcome.status == "refused":
            self.counters.refused += 1
        else:
            self.counters.failed += 1
        payload = response_payload(device, request, outcome)
        if key is not None:
            self._remember(key, payload)
        if what is None:
            what = request.command.describe() if request is not None else "?"
        timing = f" in {took * 1000:.0f} ms" if took is not None else ""
        answer = f"response to {message.response_topic!r}" if message.response_topic else "no response topic"
        level = logging.INFO if outcome.status == "done" else logging.WARNING
        log.log(
            level,
            "command %s for %s from %r (%s, %s): %s%s",
            what,
            device or "no device",
            message.topic,
            _correlation_text(message.correlation_data),
            answer,
            outcome.summary(),
            timing,
        )
        if message.response_topic:
            self._queue_response(_Response(message.response_topic, payload, message.correlation_data))
        else:
            self.counters.unanswered += 1

    # -- responses ----------------------------------------------------------------------------------
    def _queue_response(self, response: _Response) -> None:
        if len(self._responses) >= RESPONSE_QUEUE:
            dropped = self._responses.popleft()
            self.counters.responses_dropped += 1
            log.warning("response queue full: dropped the oldest waiting response (to %r)", dropped.topic)
        self._responses.append(response)
        self._response_ready.set()

    async def _responder(self) -> None:
        while True:
            while not self._responses:
                self._response_ready.clear()
                await self._response_ready.wait()
            response = self._responses.popleft()
            try:
                await self._send(response)
            except Exception:
                self.counters.responses_dropped += 1
                log.exception("response to %r could not be sent", response.topic)

    async def _send(self, response: _Response) -> None:
        for _attempt in range(RESPONSE_ATTEMPTS):
            result = await self._transport.respond(response.topic, response.payload, response.correlation)
            if result.outcome is PublishOutcome.DELIVERED:
                self.counters.responses_sent += 1
                return
            if result.outcome is PublishOutcome.REFUSED:
                break
        self.counters.responses_dropped += 1
        log.warning("response to %r not delivered: %s", response.topic, result.reason)

    def stats_text(self) -> str:
        c = self.counters
        return (
            f"commands: received {c.received}, done {c.done}, refused {c.refused}, failed {c.failed}, "
            f"duplicates {c.duplicates}, expired {c.expired}, busy {c.busy}, malformed {c.malformed}, "
            f"responses sent {c.responses_sent} / dropped {c.responses_dropped}, "
            f"response topic refused {c.response_topic_refused}, set aside {c.set_aside}"
        )


def command_filters(
    config: CommandsConfig, gateway_id: str, site: str, devices: Sequence[DeviceInfo]
) -> dict[str, str]:
    """Device -> command topic filter, as the service would subscribe (for check-config and token)."""
    wanted = set(config.devices)
    return {
        d.name: config.command_filter(gateway=gateway_id, site=site, device=d.name, driver=d.driver)
        for d in devices
        if not wanted or d.name in wanted
    }
