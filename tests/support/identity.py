"""Local identity providers for the token-source tests: an OAuth2/OIDC token endpoint and an Azure
managed-identity endpoint, each a real HTTP server on a free loopback port, issuing RS256 JWTs signed
with the local broker's issuer key (so the broker accepts what they issue).

The token endpoint checks client credentials the way a provider does: HTTP Basic or form secrets, or a
`private_key_jwt` assertion (RS256 signature under the client's registered key, `aud` = the endpoint,
`iss` = `sub` = client id, not expired, `jti` never seen before).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Issued:
    """What a local provider handed out (for the tests' own checks)."""

    tokens: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ServerCertificate:
    """A test CA (``ca``, what the client trusts) and a server certificate for 127.0.0.1 it signed."""

    ca: Path
    certificate: Path
    key: Path


def make_test_ca(directory: Path) -> ServerCertificate:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost, as PEM files in ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = ServerCertificate(directory / "ca.pem", directory / "server.crt", directory / "server.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


#: (status, JSON body) or (status, JSON body, extra headers)
_Answer = tuple[int, dict[str, Any]] | tuple[int, dict[str, Any], dict[str, str]]


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> running `handle` for every request."""

    def __init__(
        self,
        handle: Callable[[BaseHTTPRequestHandler, str, bytes], _Answer],
        tls: ServerCertificate | None = None,
    ):
        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = handle(self, method, body)
                status, payload = answer[0], answer[1]
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (answer[2] if len(answer) == 3 else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.certificate, tls.key)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="identity-endpoint", daemon=True
        )
        self.lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _sign(key_path: Path, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key_path.read_bytes(), algorithm="RS256", headers={"typ": "JWT"})


class TokenEndpoint:
    """An OIDC provider's token endpoint for the client-credentials grant."""

    def __init__(
        self,
        *,
        signing_key: Path,
        issuer: str,
        audience: str,
        clients: dict[str, str | Path],
        lifetime: float = 300,
        claims: dict[str, Any] | None = None,
        tls: ServerCertificate | None = None,
    ) -> None:
        """`clients` maps a client id to its secret (str) or its registered public key (Path)."""
        self.signing_key = signing_key
        self.issuer = issuer
        self.audience = audience
        self.clients = clients
        self.lifetime = lifetime
        self.claims = dict(claims or {})
        #: Issue opaque reference tokens instead of JWTs (as some providers do by default).
        self.opaque = False
        #: Answer 503 (an outage at the provider) while set.
        self.failing = False
        self.issued = Issued()
        self._seen_jti: set[str] = set()
        #: Every verified client assertion's header and claims (what went over the wire).
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._server = _Server(self._handle, tls)

    @property
    def url(self) -> str:
        return f"{self._server.scheme}://127.0.0.1:{self._server.port}/oauth2/v2.0/token"

    def _refuse(self, why: str, status: int = 401) -> tuple[int, dict[str, Any]]:
        self.issued.refused.append(why)
        return status, {"error": "invalid_client", "error_description": why}

    def _client(
        self, request: BaseHTTPRequestHandler, form: dict[str, str]
    ) -> str | tuple[int, dict[str, Any]]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            pair = base64.b64decode(header[6:]).decode()
            raw_id, _, raw_secret = pair.partition(":")
            client, secret = urllib.parse.unquote(raw_id), urllib.parse.unquote(raw_secret)
            return client if self.clients.get(client) == secret else self._refuse("bad client credentials")
        if "client_secret" in form:
            client = form.get("client_id", "")
            ok = self.clients.get(client) == form["client_secret"]
            return client if ok else self._refuse("bad client credentials")
        if form.get("client_assertion_type") == ASSERTION_TYPE:
            client = form.get("client_id", "")
            key = self.clients.get(client)
            if not isinstance(key, Path):
                return self._refuse("unknown client")
            try:
                claims = jwt.decode(
                    form.get("client_assertion", ""),
                    key.read_bytes(),
                    algorithms=["RS256"],
                    audience=self.url,
                    issuer=client,
                    options={"require": ["exp", "jti", "sub", "aud", "iss"]},
                )
            except jwt.PyJWTError as exc:
                return self._refuse(f"client assertion rejected: {type(exc).__name__}")
            if claims["sub"] != client:
                return self._refuse("client assertion sub is not the client")
            header = jwt.get_unverified_header(form.get("client_assertion", ""))
            with self._server.lock:
                self.assertions.append((header, claims))
            if claims["exp"] > time.time() + 600:
                return self._refuse("client assertion lives too long")
            with self._server.lock:
                if claims["jti"] in self._seen_jti:
                    return self._refuse("client assertion replayed (jti seen before)")
                self._seen_jti.add(claims["jti"])
            return client
        return self._refuse("no client authentication", status=400)

    def _handle(
        self, request: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if method != "POST" or urllib.parse.urlsplit(request.path).path != "/oauth2/v2.0/token":
            return 404, {"error": "not_found"}
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.issued.requests.append({k: v for k, v in form.items() if k not in ("client_secret",)})
        if self.failing:
            self.issued.refused.append("outage")
            return 503, {"error": "temporarily_unavailable", "error_description": "try again later"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client = self._client(request, form)
        if not isinstance(client, str):
            return client
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": client,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.lifetime),
            "jti": uuid.uuid4().hex,
            **self.claims,
        }
        token = uuid.uuid4().hex if self.opaque else _sign(self.signing_key, claims)
        self.issued.tokens.append(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": int(self.lifetime)}

    def __enter__(self) -> TokenEndpoint:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()


class ManagedIdentityEndpoint:
    """An App Service-style managed identity endpoint (azure-identity reads IDENTITY_ENDPOINT and
    IDENTITY_HEADER): GET ?api-version=2019-08-01&resource=..., header X-IDENTITY-HEADER; answers with
    an Entra-like access token for the resource."""

    def __init__(self, *, signing_key: Path, issuer: str, header_secret: str, lifetime: float = 300,
                 claims: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.signing_key = signing_key
        self.issuer = issuer
        self.header_secret = header_secret
        self.lifetime = lifetime
        self.claims = dict(claims or {})
        self.issued = Issued()
        self.object_id = str(uuid.uuid4())
        self._server = _Server(self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/msi/token"

    def _handle(
        self, request: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        parts = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        self.issued.requests.append(query)
        if method != "GET" or parts.path != "/msi/token":
            return 404, {"error": "not_found"}
        if request.headers.get("X-IDENTITY-HEADER") != self.header_secret:
            self.issued.refused.append("bad identity header")
            return 401, {"error": "unauthorized", "error_description": "missing or wrong X-IDENTITY-HEADER"}
        resource = query.get("resource", "")
        if resource != "https://eventgrid.azure.net":
            self.issued.refused.append(f"resource {resource}")
            return 400, {"error": "invalid_resource", "error_description": f"unknown resource {resource}"}
        now = int(time.time())
        claims = {
            "aud": "https://eventgrid.azure.net/",
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.lifetime),
            "sub": self.object_id,
            "oid": self.object_id,
            "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "appid": "c7f2b1a0-0000-4000-8000-000000000001",
            "idtyp": "app",
            "ver": "1.0",
            **self.claims,
        }
        token = _sign(self.signing_key, claims)
        self.issued.tokens.append(token)
        return 200, {
            "access_token": token,
            "expires_on": str(now + int(self.lifetime)),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": claims["appid"],
        }

    def __enter__(self) -> ManagedIdentityEndpoint:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()


#: Where azure-identity (MSAL) insists the Azure Arc agent's challenge files are, on Linux.
ARC_TOKENS_DIR = Path("/var/opt/azcmagent/tokens")


class ArcIdentityEndpoint:
    """A stand-in for the Azure Connected Machine agent's identity endpoint (HIMDS) on an Arc-enabled
    Linux server, implementing the documented challenge flow
    (learn.microsoft.com/azure/azure-arc/servers/managed-identity-authentication):

    1. GET ?api-version=2020-06-01&resource=... with ``Metadata: true`` and no credentials is answered
       401 with ``WWW-Authenticate: Basic realm=/var/opt/azcmagent/tokens/<new id>.key``; the agent
       writes a fresh secret into that file (readable by root and the ``himds`` group only).
    2. The same GET with ``Authorization: Basic <the file's content>`` gets the token; a secret is
       good for one use.

    azure-identity reads the file only under /var/opt/azcmagent/tokens, so the test needs to be able to
    create that folder (it runs as root in the project's test setup).
    """

    def __init__(self, *, signing_key: Path, issuer: str, lifetime: float = 300,
                 claims: dict[str, Any] | None = None, key_dir: Path = ARC_TOKENS_DIR) -> None:  # fmt: skip
        self.signing_key = signing_key
        self.issuer = issuer
        self.lifetime = lifetime
        self.claims = dict(claims or {})
        self.key_dir = key_dir
        self.issued = Issued()
        #: Every request as (query, headers that matter), in order: what went over the wire.
        self.wire: list[tuple[dict[str, str], dict[str, str]]] = []
        #: Challenge files handed out and the secret each holds (removed when used or at exit).
        self.challenges: dict[Path, str] = {}
        #: Name a challenge file that is never written (an agent the gateway cannot read from).
        self.unreadable = False
        self.object_id = str(uuid.uuid4())
        self._server = _Server(self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/metadata/identity/oauth2/token"

    @property
    def imds_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def _handle(self, request: BaseHTTPRequestHandler, method: str, body: bytes) -> _Answer:
        parts = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        seen = {k: v for k in ("Metadata", "Authorization") if (v := request.headers.get(k)) is not None}
        with self._server.lock:
            self.wire.append((query, seen))
        self.issued.requests.append(query)
        if method != "GET" or parts.path != "/metadata/identity/oauth2/token":
            return 404, {"error": "not_found"}
        if request.headers.get("Metadata") != "true":
            return 400, {"error": "invalid_request", "error_description": "Metadata header required"}
        if query.get("api-version") != "2020-06-01":
            return 400, {"error": "invalid_request", "error_description": "unsupported api-version"}
        authorization = request.headers.get("Authorization")
        if authorization is None:
            path = self.key_dir / f"{uuid.uuid4()}.key"
            secret = uuid.uuid4().hex + uuid.uuid4().hex
            if not self.unreadable:
                path.write_text(secret)
                path.chmod(0o640)
            with self._server.lock:
                self.challenges[path] = secret
            return 401, {"error": "unauthorized"}, {"WWW-Authenticate": f"Basic realm={path}"}
        with self._server.lock:
            used = next((p for p, s in self.challenges.items() if authorization == f"Basic {s}"), None)
            if used is not None:
                del self.challenges[used]
        if used is None:
            self.issued.refused.append("bad challenge answer")
            return 401, {"error": "unauthorized", "error_description": "wrong or reused challenge secret"}
        used.unlink(missing_ok=True)
        resource = query.get("resource", "")
        if resource.rstrip("/") != "https://eventgrid.azure.net":
            self.issued.refused.append(f"resource {resource}")
            return 400, {"error": "invalid_resource", "error_description": f"unknown resource {resource}"}
        now = int(time.time())
        claims = {
            "aud": "https://eventgrid.azure.net/",
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.lifetime),
            "sub": self.object_id,
            "oid": self.object_id,
            "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "xms_mirid": "/subscriptions/0000/resourcegroups/plants/providers/"
            "Microsoft.HybridCompute/machines/gw-arc",
            "idtyp": "app",
            "ver": "1.0",
            **self.claims,
        }
        token = _sign(self.signing_key, claims)
        self.issued.tokens.append(token)
        return 200, {
            "access_token": token,
            "expires_in": str(int(self.lifetime)),
            "expires_on": str(now + int(self.lifetime)),
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
        }

    def __enter__(self) -> ArcIdentityEndpoint:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()
        for path in self.challenges:
            path.unlink(missing_ok=True)


class EntraAuthority:
    """A stand-in for the Microsoft Entra ID authority (login.microsoftonline.com) over HTTPS, enough for
    azure-identity's ClientSecretCredential and CertificateCredential (MSAL) with
    ``disable_instance_discovery``: per tenant, the v2.0 OpenID configuration and the token endpoint of
    the client-credentials grant, checking a client secret or a certificate's client assertion (RS256,
    ``x5t`` = the registered certificate's SHA-1 thumbprint, ``aud`` = the token endpoint,
    ``iss`` = ``sub`` = the client id). Tokens are signed with ``signing_key`` for Event Grid's audience.
    """

    def __init__(
        self,
        *,
        signing_key: Path,
        issuer: str,
        tls: ServerCertificate,
        tenant: str,
        secrets: dict[str, str] | None = None,
        certificates: dict[str, Path] | None = None,
        lifetime: float = 300,
        claims: dict[str, Any] | None = None,
    ) -> None:
        """``secrets``: client id -> secret; ``certificates``: client id -> its certificate (PEM)."""
        self.signing_key = signing_key
        self.issuer = issuer
        self.tenant = tenant
        self.secrets = dict(secrets or {})
        self.certificates = dict(certificates or {})
        self.lifetime = lifetime
        self.claims = dict(claims or {})
        self.issued = Issued()
        #: Token requests as (tenant in the path, form without the secret), in order.
        self.token_requests: list[tuple[str, dict[str, str]]] = []
        #: Verified client assertions: (header, claims).
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._server = _Server(self._handle, tls)

    @property
    def host(self) -> str:
        """What to give as ``authority`` (azure-identity adds https://)."""
        return f"127.0.0.1:{self._server.port}"

    @property
    def base(self) -> str:
        return f"https://{self.host}"

    def token_url(self, tenant: str) -> str:
        return f"{self.base}/{tenant}/oauth2/v2.0/token"

    def _certificate_check(self, client: str, assertion: str) -> str | None:
        """None if the assertion is good, else why not."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        pem = self.certificates.get(client)
        if pem is None:
            return "unknown client"
        certificate = x509.load_pem_x509_certificate(pem.read_bytes())
        header = jwt.get_unverified_header(assertion)
        sha1 = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA1())).rstrip(b"=").decode()
        sha256 = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
        # MSAL keeps the base64url padding; RFC 7515 drops it: compare without.
        named = {str(header.get(k, "")).rstrip("=") for k in ("x5t", "x5t#S256")}
        if sha1 not in named and sha256 not in named:
            return "assertion names another certificate"
        try:
            claims = jwt.decode(
                assertion,
                certificate.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                audience=self.token_url(self.tenant),
                issuer=client,
                options={"require": ["exp", "jti", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            return f"client assertion rejected: {type(exc).__name__}"
        if claims["sub"] != client:
            return "client assertion sub is not the client"
        with self._server.lock:
            self.assertions.append((header, claims))
        return None

    def _handle(self, request: BaseHTTPRequestHandler, method: str, body: bytes) -> _Answer:
        path = urllib.parse.urlsplit(request.path).path
        segments = path.strip("/").split("/")
        tenant = segments[0] if segments else ""
        if method == "GET" and path == f"/{tenant}/v2.0/.well-known/openid-configuration":
            if tenant != self.tenant:
                return 400, {"error": "invalid_tenant", "error_description": f"tenant {tenant} not found"}
            return 200, {
                "issuer": f"{self.base}/{tenant}/v2.0",
                "authorization_endpoint": f"{self.base}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": self.token_url(tenant),
                "device_authorization_endpoint": f"{self.base}/{tenant}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{self.base}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            }
        if method != "POST" or path != f"/{tenant}/oauth2/v2.0/token":
            return 404, {"error": "not_found", "error_description": path}
        form = dict(urllib.parse.parse_qsl(body.decode()))
        with self._server.lock:
            self.token_requests.append((tenant, {k: v for k, v in form.items() if k != "client_secret"}))
        client = form.get("client_id", "")
        if tenant != self.tenant:
            self.issued.refused.append(f"tenant {tenant}")
            return 400, {"error": "invalid_request", "error_description": f"AADSTS90002: tenant {tenant}"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if "client_secret" in form:
            if self.secrets.get(client) != form["client_secret"]:
                self.issued.refused.append("bad client secret")
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: invalid secret"}
        elif form.get("client_assertion_type") == ASSERTION_TYPE:
            why = self._certificate_check(client, form.get("client_assertion", ""))
            if why is not None:
                self.issued.refused.append(why)
                return 401, {"error": "invalid_client", "error_description": f"AADSTS700027: {why}"}
        else:
            return 400, {"error": "invalid_client", "error_description": "no client authentication"}
        scope = form.get("scope", "")
        if "https://eventgrid.azure.net/.default" not in scope.split():
            self.issued.refused.append(f"scope {scope}")
            return 400, {"error": "invalid_scope", "error_description": f"scope {scope}"}
        now = int(time.time())
        claims = {
            "aud": "https://eventgrid.azure.net/",
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.lifetime),
            "sub": hashlib.sha256(client.encode()).hexdigest()[:36],
            "appid": client,
            "tid": tenant,
            "idtyp": "app",
            "ver": "1.0",
            **self.claims,
        }
        token = _sign(self.signing_key, claims)
        self.issued.tokens.append(token)
        return 200, {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self.lifetime),
            "ext_expires_in": int(self.lifetime),
        }

    def __enter__(self) -> EntraAuthority:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()
