"""The MQTT v5 uplink: one JWT-authenticated session with in-session AUTH refresh and a PUBACK window."""

from gateway.model import PublishOutcome, PublishResult, UplinkStats
from gateway.uplink.session import Uplink

__all__ = ["PublishOutcome", "PublishResult", "Uplink", "UplinkStats"]
