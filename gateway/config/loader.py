"""Reads the TOML config file and validates all of it before anything starts.

Every problem is collected (file, key path, value, why) and raised together as one ConfigError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import tomli

from gateway.config.commands import parse_commands
from gateway.config.limits import topic_problem
from gateway.config.model import (
    SHUTDOWN_GRACE_MAX,
    Config,
    DeviceRoute,
    DriverSetup,
    GatewaySettings,
    StoreSettings,
    TelemetrySettings,
)
from gateway.config.service import parse_metrics
from gateway.config.uplink import UplinkConfig, parse_uplink
from gateway.errors import ConfigError
from gateway.mqtt_topics import TemplateError, TopicTemplate, compile_template
from gateway.registry import available_drivers, is_installed, load_driver
from gateway.schema import NAME_PATTERN, NAME_WHY, Problems, Table, default_of, valid_name

DEFAULT_TOPIC = "sites/{site}/{gateway}/{device}/telemetry"
DEFAULT_GATEWAY_TOPIC = "sites/{site}/{gateway}/telemetry"
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Keys of a device table that the core reads; the driver plugin gets the rest.
CORE_DEVICE_KEYS = ("driver", "topic", "batch")


def load_config(path: str | Path, *, offline: bool = False) -> Config:
    """Load and validate ``path``. Raises ConfigError listing every problem in the file."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read the file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    return parse_config(text, source, offline=offline)


def parse_config(text: str, source: Path, *, offline: bool = False) -> Config:
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        # tomli's message names the line and column, e.g. duplicate tables or keys.
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from exc
    problems = Problems(str(source), base_dir=source.resolve().parent, offline=offline)
    root = Table(data, "", problems)

    gateway = _gateway(root.table("gateway", required=True), problems)
    telemetry = _telemetry(root.table_or_empty("telemetry"))
    store = _store(root.table_or_empty("store"))
    uplink = _uplink(root.table("uplink"), gateway)
    metrics = parse_metrics(root.table_or_empty("metrics"))
    drivers, routes = _devices(root, telemetry)
    commands = parse_commands(root.table("commands"), {r.device.name for r in routes})
    _check_topic_limits(root, telemetry, routes, gateway)
    root.finish()
    problems.raise_if_any()
    return Config(
        source=source,
        gateway=gateway,
        telemetry=telemetry,
        store=store,
        uplink=uplink,
        drivers=drivers,
        routes=routes,
        metrics=metrics,
        commands=commands,
    )


def _gateway(table: Table | None, problems: Problems) -> GatewaySettings:
    if table is None:
        return GatewaySettings(id="", site="")
    result = GatewaySettings(
        id=table.string("id", pattern=NAME_PATTERN, pattern_why=NAME_WHY),
        site=table.string("site", pattern=NAME_PATTERN, pattern_why=NAME_WHY),
        log_level=table.string("log_level", default_of(GatewaySettings, "log_level"), choices=LOG_LEVELS),
        log_format=table.string(
            "log_format", default_of(GatewaySettings, "log_format"), choices=("text", "json", "journal")
        ),
        stats_interval=table.number(
            "stats_interval", default_of(GatewaySettings, "stats_interval"), minimum=0
        ),
        state_dir=table.path("state_dir", must_exist=False) or default_of(GatewaySettings, "state_dir"),
        shutdown_grace=table.number(
            "shutdown_grace",
            default_of(GatewaySettings, "shutdown_grace"),
            minimum=0,
            maximum=SHUTDOWN_GRACE_MAX,
        ),
    )
    table.finish()
    return result


def _template(table: Table, key: str, default: str, *, allow_point: bool) -> TopicTemplate:
    text = table.string(key, default)
    allowed = ("gateway", "site", "device", "driver") + (("point",) if allow_point else ())
    try:
        return compile_template(text, allowed)
    except TemplateError as exc:
        why = str(exc)
        if not allow_point and "{point}" in text:
            why = "{point} needs batch = false (a batched message carries all points of a device)"
        table.problem(key, why, text)
        return compile_template(DEFAULT_TOPIC)


def _telemetry(table: Table) -> TelemetrySettings:
    batch = table.boolean("batch", default_of(TelemetrySettings, "batch"))
    result = TelemetrySettings(
        topic=_template(table, "topic", DEFAULT_TOPIC, allow_point=not batch),
        batch=batch,
        qos=_qos(table),
        reading_queue=table.integer(
            "reading_queue", default_of(TelemetrySettings, "reading_queue"), minimum=1, maximum=10_000_000
        ),
        format=table.string(
            "format", default_of(TelemetrySettings, "format"), choices=("default", "compact")
        ),
        gateway_batch=table.number(
            "gateway_batch", default_of(TelemetrySettings, "gateway_batch"), minimum=0, maximum=3600
        ),
        gateway_batch_bytes=table.integer(
            "gateway_batch_bytes",
            default_of(TelemetrySettings, "gateway_batch_bytes"),
            minimum=1024,
            maximum=64_000,
        ),
        point_lists=table.boolean("point_lists", default_of(TelemetrySettings, "point_lists")),
        point_list_period=table.number(
            "point_list_period",
            default_of(TelemetrySettings, "point_list_period"),
            minimum=1,
            maximum=7 * 24 * 3600,
        ),
    )
    if result.point_lists:
        if result.format != "compact":
            table.problem("point_lists", 'needs format = "compact"', True)
        elif not result.batch:
            table.problem("point_lists", "needs batch = true (a point list orders one device's points)", True)
    text = table.string("gateway_topic", DEFAULT_GATEWAY_TOPIC)
    if result.gateway_batch > 0:
        if result.format != "compact":
            table.problem("gateway_batch", 'needs format = "compact"', result.gateway_batch)
        try:
            topic = compile_template(text, ("gateway", "site"))
        except TemplateError as exc:
            table.problem("gateway_topic", str(exc), text)
            topic = compile_template(DEFAULT_GATEWAY_TOPIC, ("gateway", "site"))
        result = replace(result, gateway_topic=topic)
    table.finish()
    return result


def _qos(table: Table) -> int:
    qos = table.integer("qos", default_of(TelemetrySettings, "qos"))
    if qos not in (0, 1):
        table.problem("qos", "expected 0 or 1 (Event Grid supports QoS 0 and 1 only)", qos)
        return 1
    return qos


def _store(table: Table) -> StoreSettings:
    d = StoreSettings()  # the defaults, written once on the dataclass
    result = StoreSettings(
        kind=table.string("kind", d.kind, choices=("sqlite", "memory")),
        durability=table.string("durability", d.durability, choices=("always", "outage")),
        max_messages=table.integer("max_messages", d.max_messages, minimum=1, maximum=100_000_000),
        max_disk_bytes=round(
            table.number("max_disk_mb", d.max_disk_bytes / (1024 * 1024), minimum=1, maximum=1_000_000)
            * 1024
            * 1024
        ),
        max_age=table.number("max_age", d.max_age, minimum=0),
        overflow=table.string("overflow", d.overflow, choices=("drop-oldest", "drop-newest")),
        batch_messages=table.integer("batch_messages", d.batch_messages, minimum=1, maximum=100_000),
        batch_interval=table.number("batch_interval", d.batch_interval, minimum=0, maximum=60),
        memory_messages=table.integer("memory_messages", d.memory_messages, minimum=100, maximum=10_000_000),
        bypass_qos0=table.boolean("bypass_qos0", d.bypass_qos0),
        replay_share=table.number("replay_share", d.replay_share, positive=True, maximum=1),
        down_after=table.number("down_after", d.down_after, positive=True, maximum=3600),
    )
    table.finish()
    return result


def _uplink(table: Table | None, gateway: GatewaySettings) -> UplinkConfig | None:
    if table is None:
        return None
    return parse_uplink(table, gateway_id=gateway.id, site=gateway.site)


def _devices(
    root: Table, telemetry: TelemetrySettings
) -> tuple[tuple[DriverSetup, ...], tuple[DeviceRoute, ...]]:
    checked: dict[str, bool] = {}

    def installed(driver: str) -> bool:
        if driver not in checked:
            checked[driver] = is_installed(driver)
        return checked[driver]

    def not_installed() -> str:
        return "no such driver installed; installed: " + ", ".join(available_drivers())

    by_driver: dict[str, list[tuple[str, Table]]] = {}
    overrides: dict[str, tuple[TopicTemplate, bool]] = {}
    for name, table in root.named_tables("devices"):
        if not valid_name(name):
            root.problems.add(table.where, NAME_WHY, name)
        driver = table.string("driver")
        if driver and not installed(driver):
            table.problem("driver", not_installed(), driver)
        batch = table.boolean("batch", telemetry.batch)
        topic = (
            _template(table, "topic", telemetry.topic.text, allow_point=not batch)
            if table.has("topic") or batch != telemetry.batch
            else telemetry.topic
        )
        if "point" in topic.variables and batch:
            table.problem("topic", "{point} needs batch = false", topic.text)
        overrides[name] = (topic, batch)
        table.consume(*CORE_DEVICE_KEYS)
        if driver and installed(driver):
            by_driver.setdefault(driver, []).append((name, table))

    sections: Mapping[str, object] = {}
    drivers_table = root.table("drivers")
    if drivers_table is not None:
        sections = drivers_table.data
        for driver in sections:
            drivers_table.consume(driver)
            if not installed(driver):
                drivers_table.problem(driver, not_installed())

    setups: list[DriverSetup] = []
    routes: list[DeviceRoute] = []
    for driver in sorted(set(by_driver) | {d for d in sections if installed(d)}):
        plugin = load_driver(driver)
        if plugin is None:  # uninstalled between listing and loading
            continue
        section = drivers_table.table(driver) if drivers_table is not None and driver in sections else None
        config = plugin.parse(section, by_driver.get(driver, []))
        setups.append(DriverSetup(name=driver, plugin=plugin, config=config))
        for device in config.devices:
            topic, batch = overrides.get(device.name, (telemetry.topic, telemetry.batch))
            routes.append(DeviceRoute(device=device, topic=topic, batch=batch))
    routes.sort(key=lambda r: r.device.name)
    return tuple(setups), tuple(routes)


def _check_topic_limits(
    root: Table, telemetry: TelemetrySettings, routes: tuple[DeviceRoute, ...], gateway: GatewaySettings
) -> None:
    """Each device's longest rendered topic against Event Grid's size and level limits (once per device)."""
    for route in routes:
        device = route.device
        names = [""] if route.batch else [p.name for p in device.points] or [""]
        values = {"gateway": gateway.id, "site": gateway.site, "device": device.name, "driver": device.driver}
        for point in names:
            topic = route.topic.render({**values, "point": point})
            why = topic_problem(topic)
            if why is not None:
                key = "telemetry.topic" if route.topic is telemetry.topic else f"devices.{device.name}.topic"
                root.problems.add(
                    key, f"{why} (device {device.name}{', point ' + point if point else ''})", topic
                )
                break
