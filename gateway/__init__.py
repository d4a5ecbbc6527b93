"""fieldgate: an edge gateway from serial and Modbus sensors to one JWT-authenticated MQTT v5 uplink."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fieldgate")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
