"""The ``[metrics]`` section: the optional Prometheus endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.schema import Table

DEFAULT_METRICS_PORT = 9842


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ``[metrics]`` section: the Prometheus endpoint."""

    #: Off by default; on, it needs the ``metrics`` extra (prometheus-client).
    enabled: bool = False
    #: Loopback by default: the figures name devices and sites; expose them deliberately.
    listen: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT


def parse_metrics(table: Table) -> MetricsSettings:
    result = MetricsSettings(
        enabled=table.boolean("enabled", False),
        listen=table.string("listen", "127.0.0.1"),
        # 0 picks a free port (it is logged): for tests and one-off runs.
        port=table.integer("port", DEFAULT_METRICS_PORT, minimum=0, maximum=65535),
    )
    table.finish()
    return result
