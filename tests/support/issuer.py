"""Start the local token issuer (deploy/issuer/run.sh: node-oidc-provider) for a test.

    with LocalIssuer(token_ttl=15) as issuer:
        issuer.add_client("gw-a", public_key_path, {"site": "a"})
        broker = LocalBroker(keys_dir=..., issuer=issuer.iss)   # with issuer.signing_public_key_path
        ...a gateway with [uplink.token] source = "oauth2", token_endpoint = issuer.token_url...
        issuer.disable_client("gw-a")

The issuer runs in the foreground as a child process on a free loopback port with its own runtime
directory (clients/ and keys/); its whole log (stdout and stderr) is captured to a file. Clients are
registered, disabled and enabled with deploy/issuer/client.sh, exactly as an operator would.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.broker import DEFAULT_AUDIENCE
from tests.support.local_server import LocalServer, ServerStartError

REPO_ROOT = Path(__file__).resolve().parents[2]
ISSUER_DIR = REPO_ROOT / "deploy" / "issuer"
RUN_SH = ISSUER_DIR / "run.sh"
CLIENT_SH = ISSUER_DIR / "client.sh"


class IssuerStartError(ServerStartError):
    """The issuer did not come up; the message carries the tail of its log."""


class LocalIssuer(LocalServer):
    """node-oidc-provider on 127.0.0.1 and a free port, issuing JWTs for the local broker.

    `iss` defaults to the issuer's own URL (as a real provider's would be); start the broker with
    `LocalBroker(issuer=issuer.iss)` and the issuer's public key as `issuer.pem` in its keys dir.
    """

    name = "issuer"
    not_ready = "not answering"
    start_error = IssuerStartError

    def __init__(
        self,
        *,
        iss: str | None = None,
        audience: str = DEFAULT_AUDIENCE,
        token_ttl: int = 3600,
        keys_dir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(prefix="fieldgate-issuer-", log_name="issuer.log", start_timeout=start_timeout)
        self.keys_dir = Path(keys_dir) if keys_dir is not None else self.runtime_dir / "keys"
        self._iss = iss
        self.audience = audience
        self.token_ttl = token_ttl

    # -- where things are -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def iss(self) -> str:
        """The `iss` claim of every token it issues."""
        return self._iss if self._iss is not None else self.url

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def signing_public_key_path(self) -> Path:
        """The public key (SubjectPublicKeyInfo PEM) the broker trusts: copy it as `issuer.pem`."""
        return self.keys_dir / "signing.pem"

    @property
    def signing_certificate_path(self) -> Path:
        """A self-signed certificate of the signing key (what Event Grid takes)."""
        return self.keys_dir / "signing.crt"

    @property
    def clients_dir(self) -> Path:
        return self.runtime_dir / "clients"

    # -- clients ----------------------------------------------------------------------------------
    def _client_sh(self, *args: str) -> None:
        result = subprocess.run(
            [str(CLIENT_SH), *args, "--runtime-dir", str(self.runtime_dir)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"client.sh {args[0]} failed: {result.stderr.strip()}")

    def add_client(
        self, client_id: str, public_key_pem: Path, claims: Mapping[str, Any] | None = None
    ) -> None:
        """Registers a `private_key_jwt` client; `claims` go into its tokens (`sub` replaces the id)."""
        args = ["add", client_id, "--public-key", str(public_key_pem)]
        for name, value in (claims or {}).items():
            # Strings as NAME=VALUE; anything else (ints, string arrays) as JSON.
            claim = f"{name}={value}" if isinstance(value, str) else f"{name}:={json.dumps(value)}"
            args += ["--claim", claim]
        self._client_sh(*args)

    def disable_client(self, client_id: str) -> None:
        """Its next token request is refused (invalid_client); tokens already issued stay valid until exp."""
        self._client_sh("disable", client_id)

    def enable_client(self, client_id: str) -> None:
        self._client_sh("enable", client_id)

    def client_record(self, client_id: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((self.clients_dir / f"{client_id}.json").read_text())
        return record

    # -- lifecycle --------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [
            str(RUN_SH),
            "--port", str(self.port),
            "--audience", self.audience,
            "--token-ttl", str(self.token_ttl),
            "--runtime-dir", str(self.runtime_dir),
            "--keys", str(self.keys_dir),
        ]  # fmt: skip
        if self._iss is not None:
            cmd += ["--issuer", self._iss]
        return cmd

    def _ready(self) -> bool:
        # Its own "listening" line shows the port is ours; the discovery document shows it serves.
        if not any(f"listening on {self.url} " in line for line in self.log_lines()):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/.well-known/openid-configuration", timeout=2) as answer:
                return bool(json.load(answer).get("token_endpoint"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def discovery(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/.well-known/openid-configuration", timeout=10) as answer:
            document: dict[str, Any] = json.load(answer)
        return document

    def wait_for_log(self, needle: str, timeout: float = 30.0, *, count: int = 1) -> list[str]:
        """The log lines containing `needle` once there are at least `count`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log_lines() if needle in line]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fewer than {count} issuer log lines with {needle!r} within {timeout}s")
            time.sleep(0.05)


__all__ = ["IssuerStartError", "LocalIssuer"]
