"""``fieldgate run`` with the real uplink, for end-to-end tests: ``python -m tests.support.gateway_main``.

Until the CLI builds the uplink itself (``make_sink``), this wires it the way the app will: the config
file's devices, router and store, and an ``Uplink`` signing its own tokens with the test issuer's key.
It also maps the uplink's publish outcomes onto ``gateway.model``'s (the two branches define their own
enums until they are merged).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.app import Gateway
from gateway.auth import make_token_source
from gateway.config import load_config
from gateway.config.uplink import ReconnectConfig, RefreshConfig, SignerTokenConfig, UplinkConfig
from gateway.logs import setup_logging
from gateway.model import Message, PublishOutcome, PublishResult
from gateway.uplink import Uplink


class ModelOutcomes:
    """The uplink as a ``MessageSink`` whose futures carry ``gateway.model.PublishResult``."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    async def run(self) -> None:
        await self.uplink.run()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        inner = await self.uplink.send(message)
        outer: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()

        def copy(done: asyncio.Future[object]) -> None:
            if outer.done():
                return
            if done.cancelled():
                outer.cancel()
                return
            result = done.result()
            outcome = PublishOutcome(result.outcome.value)  # type: ignore[attr-defined]
            outer.set_result(PublishResult(outcome, result.reason_code, result.reason))  # type: ignore[attr-defined]

        inner.add_done_callback(copy)  # type: ignore[arg-type]
        return outer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--grant", required=True, help="topic filter the token grants for publishing")
    parser.add_argument("--reconnect-max", type=float, default=1.0)
    args = parser.parse_args()

    config = load_config(args.config)
    setup_logging(config.gateway.log_level, config.gateway.log_format)
    token = SignerTokenConfig(
        key_file=Path(args.key_file),
        issuer=args.issuer,
        subject=config.gateway.id,
        audience=(args.audience,),
        lifetime=600.0,
        not_before_skew=5.0,
        claims=(("publish_topics", (args.grant,)),),
    )
    uplink_config = UplinkConfig(
        host=args.host,
        port=args.port,
        tls=False,
        token=token,
        client_id=config.gateway.id,
        refresh=RefreshConfig(jitter=0.2, timeout=3.0),
        reconnect=ReconnectConfig(initial=0.1, maximum=args.reconnect_max),
        connect_timeout=5.0,
    )
    uplink = Uplink(
        uplink_config, make_token_source(token), gateway_id=config.gateway.id, site=config.gateway.site
    )

    async def run() -> None:
        gateway = Gateway(config, ModelOutcomes(uplink))
        await gateway.run()
        print(gateway.stats_line(), file=sys.stderr, flush=True)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
