"""Permission check benchmark: what the gate's per-message check costs next to routing the message.

Run on demand (not part of the test run):

    python tests/bench/bench_permissions.py [--grants 20] [--topics 50] [--rounds 200000]

Prints microseconds per check for a permission set of ``--grants`` template-expanded filters: matched
afresh each time (PermissionSet.may_publish) and through the tracker's per-topic cache (what the gate
uses), and, as the baseline measured in the same run, the router's cost to turn one reading into a
message (topic + JSON payload). Ratios are check / routing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from gateway.auth.token import Token
from gateway.config.model import DeviceRoute
from gateway.config.permissions import PermissionsConfig
from gateway.model import DeviceInfo, PointInfo, Reading
from gateway.mqtt_topics import compile_template
from gateway.permissions.grants import PermissionSet
from gateway.permissions.tracker import PermissionTracker
from gateway.pipeline.router import Router


def per_call(fn: Callable[[int], object], rounds: int) -> float:
    started = time.perf_counter()
    for i in range(rounds):
        fn(i)
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grants", type=int, default=20, help="site values in the token (filters granted)")
    parser.add_argument("--topics", type=int, default=50, help="distinct device topics")
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()

    config = PermissionsConfig(
        publish_templates=("sites/${client.attributes.site}/${client.authenticationName}/#",)
    )
    sites = [f"s{i}" for i in range(args.grants)]
    claims = {"sub": "gw-1", "site": sites, "exp": 2**31 - 1}
    perms = PermissionSet.from_claims(config, claims)
    tracker = PermissionTracker(config)
    tracker.token_in_use(Token(value="x.y.z", expires_at=2**31 - 1, issued_at=0, claims=claims))
    # Half the topics granted (last site), half not: the worst case scans every grant.
    topics = [f"sites/{sites[-1] if i % 2 else 'other'}/gw-1/dev-{i}/telemetry" for i in range(args.topics)]

    routes = [
        DeviceRoute(
            DeviceInfo(f"dev-{i}", "simulated", (PointInfo("value", "°C"),)),
            compile_template("sites/{site}/{gateway}/{device}/telemetry"),
            True,
        )
        for i in range(args.topics)
    ]
    router = Router("gw-1", sites[-1], routes, 1)
    readings = [[Reading(f"dev-{i}", "value", 21.5, "°C", 1764400000.0)] for i in range(args.topics)]

    n = args.topics
    routing = per_call(lambda i: router.route(readings[i % n]), args.rounds)
    fresh = per_call(lambda i: perms.may_publish(topics[i % n]), args.rounds)
    cached = per_call(lambda i: tracker.publish_verdict(topics[i % n]), args.rounds)
    print(f"{len(perms.publish)} granted filters, {n} topics, {args.rounds} rounds")
    print(f"router, one reading -> message : {routing:7.2f} us (baseline)")
    print(f"check, matched each time       : {fresh:7.2f} us  ratio {fresh / routing:.2f}")
    print(f"check, tracker cache (the gate): {cached:7.2f} us  ratio {cached / routing:.3f}")


if __name__ == "__main__":
    main()
