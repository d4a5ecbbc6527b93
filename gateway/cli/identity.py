"""``fieldgate identity new --config FILE``: enrol a gateway with its own key pair.

Creates the private key where the config's token source expects it (oauth2 ``private_key_file`` for
``private_key_jwt``; azure ``certificate_file`` for ``client-certificate``) and prints what the issuer
needs: the public key as PEM and JWK, the client id and the claims this gateway's tokens must carry.
The private key is never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from gateway.config import Config, load_config
from gateway.errors import ConfigError, ExitCode, FieldgateError


def register(sub: Any) -> None:
    """Add ``identity`` with its ``new`` subcommand to the top-level subparsers."""
    identity = sub.add_parser(
        "identity",
        help="enrol this gateway: its own key pair and what to register with the issuer",
        description="Per-gateway identities (see gateway/auth/README.md).",
    )
    actions = identity.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new",
        help="create the gateway's key pair and print what to register with the issuer",
        description="Create the private key (mode 0600, never printed) at the path the config's token "
        "source names (oauth2 private_key_file, azure certificate_file) and print the public key "
        "(PEM and JWK with kid), the client id and the claims the gateway expects in its tokens.",
    )
    new.add_argument("--config", "-c", required=True, help="the TOML config file")
    new.add_argument(
        "--force", action="store_true", help="replace an existing key (the old one stops working)"
    )
    new.set_defaults(handler=cmd_identity_new)


def _expected_claims(config: Config) -> list[tuple[str, str, str]]:
    uplink = config.uplink
    assert uplink is not None
    name = uplink.username or uplink.client_id
    return [
        ("sub", name, "the MQTT authentication name: [uplink] username, else client_id"),
        ("site", config.gateway.site, "a client attribute: topic templates use ${client.attributes.site}"),
    ]


def cmd_identity_new(args: argparse.Namespace) -> int:
    from gateway.auth.enroll import new_key_pair
    from gateway.config.uplink import AzureTokenConfig, OAuth2TokenConfig

    try:
        # Offline: the key file the config names does not exist yet.
        config = load_config(args.config, offline=True)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return ExitCode.FAILURE
    uplink = config.uplink
    token = uplink.token if uplink is not None else None
    out = sys.stdout
    try:
        if isinstance(token, OAuth2TokenConfig) and token.private_key_file is not None:
            path = token.private_key_file
            public = new_key_pair(path, force=args.force, kid=token.key_id)
            out.write(f"created {path} (RSA private key, mode 0600; not shown)\n\n")
            out.write(f"register with the issuer at {token.token_endpoint}:\n")
            out.write(f"  client id:   {token.client_id}\n")
            out.write("  client auth: private_key_jwt (RS256 client assertions signed with this key)\n")
            _public_key(out, public.pem, public.jwk)
            _claims(out, config)
            if token.key_id is None:
                out.write(
                    f'\nkid: the issuer may ask for it; then set key_id = "{public.kid}" in [uplink.token]\n'
                )
            claim_args = " ".join(f"--claim {n}={v}" for n, v, _ in _expected_claims(config)[1:])
            out.write(
                "\nlocal issuer (deploy/issuer): save the PEM above as PUBLIC.pem, then\n"
                f"  deploy/issuer/client.sh add {token.client_id} --public-key PUBLIC.pem {claim_args}\n"
            )
            return ExitCode.OK
        if isinstance(token, AzureTokenConfig) and token.credential == "client-certificate":
            assert token.certificate_file is not None  # required by the parser
            password = token.certificate_password.reveal() if token.certificate_password else None
            public = new_key_pair(
                token.certificate_file,
                force=args.force,
                certificate_subject=config.gateway.id,
                password=password,
            )
            path = token.certificate_file
            out.write(f"created {path} (RSA private key and a self-signed certificate, mode 0600)\n\n")
            out.write(
                f"upload the certificate to the app registration {token.client_id} "
                f"(tenant {token.tenant_id}), Certificates & secrets:\n"
            )
            out.write(public.certificate_pem)
            out.write(f"  thumbprint (SHA-1): {public.certificate_thumbprint}\n")
            _public_key(out, public.pem, public.jwk)
            out.write(
                "\nEvent Grid: give this app registration's service principal the TopicSpaces Publisher/"
                "Subscriber roles it needs; Entra ID tokens carry no site claim.\n"
            )
            return ExitCode.OK
    except FieldgateError as exc:
        print(f"fieldgate identity new: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    kind = f'source = "{token.source}"' if token is not None else "no [uplink]"
    print(
        f"fieldgate identity new: {config.source}: {kind} has no per-gateway key to create; use "
        'source = "oauth2" with client_auth = "private_key_jwt" (an issuer) or source = "azure" with '
        'credential = "client-certificate" (Entra ID); see gateway/auth/README.md',
        file=sys.stderr,
    )
    return ExitCode.FAILURE


def _public_key(out: TextIO, pem: str, jwk: dict[str, str]) -> None:
    out.write("  public key (PEM):\n")
    out.write(pem)
    out.write("  public key (JWK):\n")
    out.write(json.dumps(jwk, sort_keys=True) + "\n")


def _claims(out: TextIO, config: Config) -> None:
    out.write("  claims the gateway expects in its access tokens:\n")
    for name, value, why in _expected_claims(config):
        out.write(f"    {name} = {json.dumps(value)}  ({why})\n")
    uplink = config.uplink
    if uplink is not None and uplink.token.source == "oauth2":
        out.write(
            '    aud = the broker\'s audience, e.g. "https://<namespace>.<region>-1.ts.eventgrid.azure.net/"\n'
        )
