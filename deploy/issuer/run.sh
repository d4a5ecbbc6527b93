#!/usr/bin/env bash
# Runs the local token issuer (node-oidc-provider, configured by issuer.mjs) in the foreground on
# 127.0.0.1: client-credentials grant, private_key_jwt client authentication, RS256 JWT access tokens
# with per-client claims, for the local broker (deploy/broker/run.sh) to verify.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<'EOT'
Usage: deploy/issuer/run.sh [options]

Runs the fieldgate local issuer in the foreground on 127.0.0.1. Installs node-oidc-provider if needed
and creates an RS256 signing key if the keys directory has none.

Options:
  --port N            TCP port (default 4593)
  --issuer URL        the tokens' `iss` (default http://127.0.0.1:PORT); start the broker with the same
                      --issuer
  --audience URL      the tokens' `aud` (default https://fieldgate-local.ts.eventgrid.azure.net/, the
                      local broker's default audience)
  --token-ttl S       access token lifetime in seconds (default 3600)
  --runtime-dir DIR   holds clients/ (one JSON file per registered client) and, unless --keys is given,
                      keys/ (default deploy/issuer/dev-runtime)
  --keys DIR          signing.key (private, RSA 2048), signing.pem (its public key: give it to the
                      broker as issuer.pem) and signing.crt (a self-signed certificate of it, the form
                      Event Grid wants); created when missing (default RUNTIME_DIR/keys)
  -h, --help          this help

Clients: deploy/issuer/client.sh add|disable|enable|remove|list (see deploy/issuer/README.md).
EOT
}

port=4593
issuer=""
audience="https://fieldgate-local.ts.eventgrid.azure.net/"
ttl=3600
runtime_dir="$here/dev-runtime"
keys_dir=""

need_value() {
    if [[ $# -lt 2 || -z "$2" ]]; then
        echo "run.sh: $1 needs a value" >&2
        exit 2
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) need_value "$@"; port=$2; shift 2 ;;
        --issuer) need_value "$@"; issuer=$2; shift 2 ;;
        --audience) need_value "$@"; audience=$2; shift 2 ;;
        --token-ttl) need_value "$@"; ttl=$2; shift 2 ;;
        --runtime-dir) need_value "$@"; runtime_dir=$2; shift 2 ;;
        --keys) need_value "$@"; keys_dir=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "run.sh: --port must be 1..65535, got '$port'" >&2
    exit 2
fi
if ! [[ "$ttl" =~ ^[0-9]+$ ]] || (( ttl < 1 )); then
    echo "run.sh: --token-ttl must be a whole number of seconds, got '$ttl'" >&2
    exit 2
fi
[[ -n "$issuer" ]] || issuer="http://127.0.0.1:$port"

"$here/install-deps.sh"

mkdir -p "$runtime_dir/clients"
runtime_dir=$(cd "$runtime_dir" && pwd)
[[ -n "$keys_dir" ]] || keys_dir="$runtime_dir/keys"
mkdir -p "$keys_dir"
keys_dir=$(cd "$keys_dir" && pwd)

umask 077
if [[ ! -f "$keys_dir/signing.key" ]]; then
    echo "run.sh: creating the RS256 signing key in $keys_dir" >&2
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$keys_dir/signing.key" 2>/dev/null
    rm -f "$keys_dir/signing.pem" "$keys_dir/signing.crt"
fi
if [[ ! -f "$keys_dir/signing.pem" ]]; then
    openssl pkey -in "$keys_dir/signing.key" -pubout -out "$keys_dir/signing.pem"
    chmod 644 "$keys_dir/signing.pem"
fi
if [[ ! -f "$keys_dir/signing.crt" ]]; then
    # Event Grid trusts issuer *certificates* (from Key Vault); our broker reads the public key.
    openssl req -x509 -new -key "$keys_dir/signing.key" -days 825 -subj "/CN=fieldgate local issuer" \
        -out "$keys_dir/signing.crt" 2>/dev/null
    chmod 644 "$keys_dir/signing.crt"
fi

echo "run.sh: fieldgate issuer on http://127.0.0.1:$port (token endpoint /token, iss $issuer, aud $audience, ttl ${ttl}s)" >&2
echo "run.sh: clients in $runtime_dir/clients; public key $keys_dir/signing.pem; certificate $keys_dir/signing.crt" >&2
exec node "$here/issuer.mjs" serve --port "$port" --issuer "$issuer" --audience "$audience" \
    --token-ttl "$ttl" --keys "$keys_dir" --clients "$runtime_dir/clients"
