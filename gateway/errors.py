"""fieldgate's own exception tree. Library errors are mapped into it at the boundary (``raise ... from exc``).

::

    FieldgateError
    ├── ConfigError                 the config file is invalid (carries every problem found)
    ├── SecretError                 an env:/file: secret reference cannot be resolved
    ├── DriverError                 a device could not be read or written (names the device)
    │   ├── DeviceUnavailable       port missing, connection refused, unplugged
    │   ├── DeviceTimeout           no answer within the timeout
    │   ├── DeviceProtocolError     bad frame, CRC error, short answer
    │   └── DeviceRefused           the device answered with an exception / refusal
    ├── CommandRefused              a command was refused before reaching the device (``code`` says why)
    │   ├── UnknownTarget           unknown device, point or command (also a KeyError)
    │   └── ValueRefused            not writable, out of range, wrong type (also a ValueError)
    ├── TokenError                  a token could not be obtained or is unusable
    └── UplinkError                 the MQTT session failed
        └── ConnectRefused          CONNACK with a failure reason code

Messages never contain secrets (tokens, keys, client secrets). :class:`ExitCode` is the one table of the
``fieldgate`` command's exit codes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    """What every ``fieldgate`` subcommand's exit status means (the same number means the same thing)."""

    OK = 0
    #: The command failed (a file it cannot read, a token it cannot fetch, a stuck service part).
    FAILURE = 1
    #: The command line was wrong (argparse's own code).
    USAGE = 2
    #: ``status``: the service is not running (its status file is stale or says it stopped), as systemctl.
    NOT_RUNNING = 3
    #: ``status``: no status file: no service ran with this state directory.
    NO_STATUS_FILE = 4
    #: ``check-config``, ``token``: a device, birth, will or command topic is not granted by the token.
    NOT_GRANTED = 5
    #: sysexits' EX_CONFIG: ``run`` refused its config. The unit's ``RestartPreventExitStatus=78`` keeps
    #: systemd from restarting it in a loop until the file is fixed.
    CONFIG = 78


class FieldgateError(Exception):
    """Base of every error fieldgate raises on purpose."""


class ConfigError(FieldgateError):
    """The configuration is invalid. ``problems`` holds one line per problem, each naming file and key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the configuration"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class SecretError(FieldgateError):
    """A secret reference (``env:NAME`` / ``file:/path``) cannot be resolved. Names the reference only."""


class DriverError(FieldgateError):
    """A device could not be read or written."""

    def __init__(self, device: str, detail: str) -> None:
        self.device = device
        self.detail = detail
        super().__init__(f"{device}: {detail}")


class DeviceUnavailable(DriverError):
    """The device or its port cannot be reached (missing, unplugged, connection refused)."""


class DeviceTimeout(DriverError):
    """The device did not answer in time."""


class DeviceProtocolError(DriverError):
    """The answer was malformed (bad CRC, short frame, unparsable)."""


class DeviceRefused(DriverError):
    """The device answered with a refusal (e.g. a Modbus exception response)."""


class CommandRefused(FieldgateError):
    """A command was refused before anything was sent to the device.

    ``code`` is one word for machines (``not-writable``, ``out-of-range``, ``invalid-value``,
    ``unknown-device``, ``unknown-point``, ``unknown-command``, ``not-supported``); ``detail`` says why.
    """

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(detail)

    def __str__(self) -> str:
        return self.detail


class UnknownTarget(CommandRefused, KeyError):
    """Unknown device, point or command. Also a KeyError: looking a name up failed."""


class ValueRefused(CommandRefused, ValueError):
    """The value may not be written (not writable, out of range, wrong type). Also a ValueError."""


class TokenError(FieldgateError):
    """A token could not be obtained, or the one obtained is unusable."""


class UplinkError(FieldgateError):
    """The MQTT session failed."""


class ConnectRefused(UplinkError):
    """The broker refused the CONNECT; ``reason_code`` is the CONNACK reason code."""

    def __init__(self, reason_code: int, detail: str) -> None:
        self.reason_code = reason_code
        super().__init__(f"connection refused (0x{reason_code:02X}): {detail}")
