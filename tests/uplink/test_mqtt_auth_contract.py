"""The private paho-mqtt / aiomqtt names our AUTH extension relies on still exist.

If this fails after an upgrade, `gateway/uplink/mqtt_auth.py` needs porting before the pins in
pyproject.toml may move: the failure names every missing piece.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplink.mqtt_auth import PRIVATE_NAMES, AuthClient, install


async def test_every_private_name_the_auth_extension_uses_is_still_there() -> None:
    aio = aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5)
    instances: dict[str, object] = {
        "paho.mqtt.client.Client": paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5),
        "aiomqtt.Client": aio,
    }
    missing = []
    for owner, name, kind in PRIVATE_NAMES:
        target = instances[owner]
        where = target if kind == "instance attribute" else type(target)
        if not hasattr(where, name):
            missing.append(f"{owner}.{name} ({kind})")
    versions = f"paho-mqtt {version('paho-mqtt')}, aiomqtt {version('aiomqtt')}"
    assert not missing, f"{versions} lacks what gateway/uplink/mqtt_auth.py relies on: " + ", ".join(missing)


async def test_the_private_names_still_have_the_shapes_we_use() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    params = list(inspect.signature(client._packet_queue).parameters)
    assert params[:4] == ["command", "packet", "mid", "qos"], f"_packet_queue now takes {params}"
    assert {"command", "packet"} <= set(client._in_packet), f"_in_packet keys are {sorted(client._in_packet)}"
    assert list(inspect.signature(client._packet_handle).parameters) == [], "_packet_handle takes arguments"

    aio = aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5)
    assert isinstance(aio._client, paho.Client), "aiomqtt.Client._client is no longer a paho client"
    auth = install(aio)
    assert isinstance(aio._client, AuthClient) and auth is aio._client
    # Only that instance changed class: paho's own class is untouched.
    assert type(paho.Client(CallbackAPIVersion.VERSION2)) is paho.Client
