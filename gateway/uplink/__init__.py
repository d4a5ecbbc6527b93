"""The MQTT v5 uplink: one JWT-authenticated session with in-session AUTH refresh and a PUBACK window."""

from gateway.uplink.session import PublishOutcome, PublishResult, Uplink, UplinkStats

__all__ = ["PublishOutcome", "PublishResult", "Uplink", "UplinkStats"]
