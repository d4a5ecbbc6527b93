"""Which filters the uplink subscribes: as few as the grants allow, within Event Grid's per-session limits.

Pure helpers for :mod:`gateway.uplink.session`: one wildcard filter that covers filters differing only in
whole levels (each device's command topic), and the batches of at most 10 filters per SUBSCRIBE.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config.limits import MAX_FILTERS_PER_SUBSCRIBE


def cover_filter(filters: Sequence[str]) -> str | None:
    """One filter matching every one of ``filters``: the levels where they differ become ``+``.

    None for fewer than two filters, different level counts, or a differing level holding a wildcard.
    """
    if len(filters) < 2:
        return None
    split = [f.split("/") for f in filters]
    count = len(split[0])
    if any(len(levels) != count for levels in split):
        return None
    out: list[str] = []
    for column in zip(*split, strict=True):
        first = column[0]
        if all(level == first for level in column):
            out.append(first)
        elif any(level in ("+", "#") for level in column):
            return None
        else:
            out.append("+")
    return "/".join(out)


def batches(filters: Sequence[str], size: int = MAX_FILTERS_PER_SUBSCRIBE) -> list[list[str]]:
    """``filters`` in SUBSCRIBE-sized groups, in order."""
    return [list(filters[i : i + size]) for i in range(0, len(filters), size)]
