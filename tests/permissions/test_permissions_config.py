"""`[uplink.permissions]` and the `azure` / `oauth2` token sections: defaults, and every problem at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config.uplink import (
    AzureTokenConfig,
    OAuth2TokenConfig,
    PermissionsConfig,
    UplinkConfig,
    parse_uplink,
)
from gateway.schema import Problems, Secret, Table


def parse(text: str, tmp_path: Path) -> tuple[UplinkConfig, list[str]]:
    data = tomllib.loads(text)
    problems = Problems("gw.toml", base_dir=tmp_path)
    return parse_uplink(Table(data["uplink"], "uplink", problems), gateway_id="gw-1"), problems.lines


HEAD = """
[uplink]
host = "ns.westeurope-1.ts.eventgrid.azure.net"
"""
AZURE = HEAD + '[uplink.token]\nsource = "azure"\n'


def test_azure_defaults_to_managed_identity_for_event_grid_with_oauth2_jwt(tmp_path: Path) -> None:
    cfg, problems = parse(AZURE, tmp_path)
    assert problems == []
    assert cfg.token == AzureTokenConfig()
    assert cfg.token.scope == "https://eventgrid.azure.net/.default"
    assert cfg.auth_method == "OAUTH2-JWT"
    assert cfg.permissions is None  # no section: topics are not checked


def test_azure_client_secret_needs_its_ids_and_a_secret_by_reference(
    tmp_path: Path, monkeypatch: object
) -> None:
    _, problems = parse(AZURE + 'credential = "client-secret"\nclient_secret = "hunter2"\n', tmp_path)
    assert problems == [
        'gw.toml: uplink.token.client_id: is required with credential = "client-secret"',
        'gw.toml: uplink.token.tenant_id: is required with credential = "client-secret"',
        "gw.toml: uplink.token.client_secret = <hidden>: secrets are given by reference: env:NAME or "
        "file:/path, never inline",
    ]
    secret = tmp_path / "secret"
    secret.write_text("x")
    cfg, problems = parse(
        AZURE
        + 'credential = "client-secret"\nclient_id = "c"\ntenant_id = "t"\nclient_secret = "file:secret"\n',
        tmp_path,
    )
    assert problems == []
    assert isinstance(cfg.token, AzureTokenConfig)
    assert cfg.token.client_secret == Secret(f"file:{secret}")


def test_oauth2_reads_the_endpoint_client_and_optional_parameters(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("read at start, not at parse time")
    cfg, problems = parse(
        HEAD
        + """
[uplink.token]
source = "oauth2"
token_endpoint = "https://login.example.com/oauth2/token"
client_id = "gw-1"
client_auth = "private_key_jwt"
private_key_file = "client.key"
scope = "mqtt"
audience = "https://ns.ts.eventgrid.azure.net/"
""",
        tmp_path,
    )
    assert problems == []
    assert cfg.auth_method == "CUSTOM-JWT"
    assert cfg.token == OAuth2TokenConfig(
        token_endpoint="https://login.example.com/oauth2/token",
        client_id="gw-1",
        client_auth="private_key_jwt",
        private_key_file=key,
        scope="mqtt",
        audience="https://ns.ts.eventgrid.azure.net/",
    )


def test_oauth2_problems_are_reported_together(tmp_path: Path) -> None:
    _, problems = parse(
        HEAD
        + """
[uplink.token]
source = "oauth2"
token_endpoint = "http://idp.example.com/token"
client_auth = "client_secret_jwt"
client_secret = "env:"
""",
        tmp_path,
    )
    assert problems == [
        'gw.toml: uplink.token.token_endpoint = "http://idp.example.com/token": must use https '
        "(plain http only to a loopback address)",
        "gw.toml: uplink.token.client_id: is required",
        'gw.toml: uplink.token.client_auth = "client_secret_jwt": expected one of "client_secret_basic", '
        '"client_secret_post", "private_key_jwt"',
        "gw.toml: uplink.token.client_secret = <hidden>: secrets are given by reference: env:NAME or "
        "file:/path, never inline",
    ]


def test_permissions_read_templates_claims_and_the_policy(tmp_path: Path) -> None:
    cfg, problems = parse(
        AZURE
        + """
[uplink.permissions]
publish = ["sites/${client.attributes.site}/#", "devices/${client.authenticationName}/status"]
subscribe = "cmd/${client.authenticationName}/#"
publish_claim = ""
denied = "hold"
""",
        tmp_path,
    )
    assert problems == []
    assert cfg.permissions == PermissionsConfig(
        publish_templates=(
            "sites/${client.attributes.site}/#",
            "devices/${client.authenticationName}/status",
        ),
        subscribe_templates=("cmd/${client.authenticationName}/#",),
        publish_claim=None,
        subscribe_claim="subscribe_topics",
        denied="hold",
    )


def test_malformed_templates_are_named_with_their_position(tmp_path: Path) -> None:
    _, problems = parse(
        AZURE
        + """
[uplink.permissions]
publish = ["sites/${client.attributes.site}/#", "sites/#/x", "a/${client.site}"]
subscribe = ["cmd/${client.authenticationName"]
denied = "queue"
colour = "blue"
""",
        tmp_path,
    )
    assert problems == [
        'gw.toml: uplink.permissions.publish[1] = "sites/#/x": not a valid MQTT topic filter',
        'gw.toml: uplink.permissions.publish[2] = "a/${client.site}": unknown variable ${client.site} '
        "(use ${client.authenticationName} or ${client.attributes.<claim>})",
        'gw.toml: uplink.permissions.subscribe[0] = "cmd/${client.authenticationName": unterminated ${ in '
        "template",
        'gw.toml: uplink.permissions.denied = "queue": expected one of "drop", "hold"',
        "gw.toml: uplink.permissions.colour: unknown key",
    ]


def test_check_config_says_plainly_when_it_cannot_get_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "fieldgate.toml"
    config.write_text(
        """
[gateway]
id = "gw-1"
site = "berlin"

[uplink]
host = "ns.westeurope-1.ts.eventgrid.azure.net"
[uplink.token]
source = "azure"
[uplink.permissions]
publish = ["sites/${client.attributes.site}/#"]

[devices.boiler]
driver = "simulated"
[[devices.boiler.points]]
name = "t"
"""
    )
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        "permissions: not checked: the token comes from azure managed-identity "
        "(scope https://eventgrid.azure.net/.default) at run time; "
        f"run `fieldgate token --config {config}` on the gateway to check the grants"
    ) in out
