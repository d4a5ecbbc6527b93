"""The configuration file: TOML parsed once into frozen, typed objects (see :func:`load_config`)."""

from gateway.config.loader import load_config, parse_config
from gateway.config.model import (
    Config,
    DeviceRoute,
    DriverSetup,
    GatewaySettings,
    StoreSettings,
    TelemetrySettings,
)

__all__ = [
    "Config",
    "DeviceRoute",
    "DriverSetup",
    "GatewaySettings",
    "StoreSettings",
    "TelemetrySettings",
    "load_config",
    "parse_config",
]
