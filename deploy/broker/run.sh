#!/usr/bin/env bash
# Runs a local mosquitto 2.0 with the fieldgate auth plugin (Event Grid-style custom JWT
# authentication) in the foreground, bound to 127.0.0.1 only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<'EOF'
Usage: deploy/broker/run.sh [options]

Runs mosquitto with the fieldgate JWT auth plugin in the foreground on 127.0.0.1.
Builds the plugin if needed and creates development keys if there are none.

Options:
  --port N             TCP port (default 1883; 8883 is customary with --tls)
  --issuer URL         required `iss` claim (default https://fieldgate.dev/issuer)
  --audience URL       required member of `aud` (default https://fieldgate-local.ts.eventgrid.azure.net/)
  --method NAME        CONNECT authentication method (default CUSTOM-JWT)
  --keys DIR           directory holding issuer.pem (and issuer.key for signing tokens);
                       created with a new RSA 2048 pair when empty (default deploy/broker/dev-keys)
  --second-key FILE    a second issuer public key (PEM), accepted too (key rotation)
  --publish-claim NAME claim listing publish topic filters (default publish_topics; '' = none)
  --subscribe-claim NAME claim listing subscribe topic filters (default subscribe_topics; '' = none)
  --publish-template T Event Grid topic template granting publish (repeatable), e.g.
                       'devices/${client.authenticationName}/#'
  --subscribe-template T same for subscribe (repeatable)
  --tls                listen with TLS 1.2+; creates a dev CA (ca.pem) and a server certificate for
                       127.0.0.1/localhost in the keys directory if missing
  --runtime-dir DIR    where the generated mosquitto.conf goes (default: a new temporary directory)
  --verbose            mosquitto debug logging (every packet and every allowed publish)
  -h, --help           this help
EOF
}

port=1883
issuer="https://fieldgate.dev/issuer"
audience="https://fieldgate-local.ts.eventgrid.azure.net/"
method="CUSTOM-JWT"
keys_dir="$here/dev-keys"
second_key=""
publish_claim="publish_topics"
subscribe_claim="subscribe_topics"
publish_templates=()
subscribe_templates=()
tls=false
runtime_dir=""
verbose=false

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
        --method) need_value "$@"; method=$2; shift 2 ;;
        --keys) need_value "$@"; keys_dir=$2; shift 2 ;;
        --second-key) need_value "$@"; second_key=$2; shift 2 ;;
        --publish-claim) publish_claim=${2-}; shift 2 ;;
        --subscribe-claim) subscribe_claim=${2-}; shift 2 ;;
        --publish-template) need_value "$@"; publish_templates+=("$2"); shift 2 ;;
        --subscribe-template) need_value "$@"; subscribe_templates+=("$2"); shift 2 ;;
        --tls) tls=true; shift ;;
        --runtime-dir) need_value "$@"; runtime_dir=$2; shift 2 ;;
        --verbose) verbose=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "run.sh: --port must be 1..65535, got '$port'" >&2
    exit 2
fi
for value in "$issuer" "$audience" "$method" "$publish_claim" "$subscribe_claim" \
        "${publish_templates[@]}" "${subscribe_templates[@]}"; do
    if [[ "$value" == *$'\n'* ]]; then
        echo "run.sh: option values must be single lines" >&2
        exit 2
    fi
done

"$here/install-deps.sh"
make -s -C "$here" build/fieldgate_auth.so >&2

mkdir -p "$keys_dir"
keys_dir=$(cd "$keys_dir" && pwd)
umask 077
if [[ ! -f "$keys_dir/issuer.pem" ]]; then
    if [[ -f "$keys_dir/issuer.key" ]]; then
        echo "run.sh: deriving $keys_dir/issuer.pem from issuer.key" >&2
    else
        echo "run.sh: creating development issuer key pair in $keys_dir" >&2
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$keys_dir/issuer.key" 2>/dev/null
    fi
    openssl pkey -in "$keys_dir/issuer.key" -pubout -out "$keys_dir/issuer.pem"
    chmod 644 "$keys_dir/issuer.pem"
fi

if $tls; then
    if [[ ! -f "$keys_dir/ca.pem" || ! -f "$keys_dir/ca.key" ]]; then
        echo "run.sh: creating development CA in $keys_dir" >&2
        openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=fieldgate dev CA" \
            -keyout "$keys_dir/ca.key" -out "$keys_dir/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            2>/dev/null
        chmod 644 "$keys_dir/ca.pem"
        rm -f "$keys_dir/server.pem"
    fi
    if [[ ! -f "$keys_dir/server.pem" || ! -f "$keys_dir/server.key" ]]; then
        echo "run.sh: creating development server certificate for 127.0.0.1/localhost" >&2
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$keys_dir/server.key" -out "$keys_dir/server.csr" 2>/dev/null
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" \
            "basicConstraints=CA:FALSE" > "$keys_dir/server.ext"
        openssl x509 -req -in "$keys_dir/server.csr" -CA "$keys_dir/ca.pem" -CAkey "$keys_dir/ca.key" \
            -CAcreateserial -days 825 -extfile "$keys_dir/server.ext" -out "$keys_dir/server.pem" 2>/dev/null
        rm -f "$keys_dir/server.csr" "$keys_dir/server.ext"
        chmod 644 "$keys_dir/server.pem"
    fi
fi

if [[ -z "$runtime_dir" ]]; then
    runtime_dir=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-broker.XXXXXX")
fi
mkdir -p "$runtime_dir"
runtime_dir=$(cd "$runtime_dir" && pwd)
conf="$runtime_dir/mosquitto.conf"

{
    echo "# generated by deploy/broker/run.sh"
    # mosquitto started as root would switch to the 'mosquitto' user and lose access to the keys.
    echo "user $(id -un)"
    echo "per_listener_settings false"
    echo "allow_anonymous false"
    echo "persistence false"
    echo "log_dest stderr"
    echo "log_timestamp_format %Y-%m-%dT%H:%M:%S"
    if $verbose; then
        echo "log_type all"
    else
        for t in error warning notice information; do echo "log_type $t"; done
    fi
    echo "connection_messages true"
    # Event Grid's limits: QoS 0/1 only, 512 KiB packets, keep-alive <= 1160 s, 10 topic aliases.
    # (max_qos and max_topic_alias are listener settings: placed before a listener line they
    # would open a default listener on port 1883.)
    echo "max_packet_size 524288"
    echo "max_keepalive 1160"
    echo "set_tcp_nodelay true"
    echo
    echo "listener $port 127.0.0.1"
    echo "max_qos 1"
    echo "max_topic_alias 10"
    if $tls; then
        echo "cafile $keys_dir/ca.pem"
        echo "certfile $keys_dir/server.pem"
        echo "keyfile $keys_dir/server.key"
        echo "tls_version tlsv1.2"
        echo "require_certificate false"
    fi
    echo
    echo "plugin $here/build/fieldgate_auth.so"
    echo "plugin_opt_method $method"
    echo "plugin_opt_issuer $issuer"
    echo "plugin_opt_audience $audience"
    echo "plugin_opt_public_key_file $keys_dir/issuer.pem"
    if [[ -n "$second_key" ]]; then
        echo "plugin_opt_public_key_file_2 $(cd "$(dirname "$second_key")" && pwd)/$(basename "$second_key")"
    fi
    # "-" tells the plugin that no claim lists topics for that action.
    echo "plugin_opt_publish_claim ${publish_claim:--}"
    echo "plugin_opt_subscribe_claim ${subscribe_claim:--}"
    for t in "${publish_templates[@]}"; do echo "plugin_opt_publish_template $t"; done
    for t in "${subscribe_templates[@]}"; do echo "plugin_opt_subscribe_template $t"; done
} > "$conf"

scheme=mqtt
$tls && scheme=mqtts
echo "run.sh: fieldgate broker on $scheme://127.0.0.1:$port (method $method, issuer $issuer, audience $audience)" >&2
echo "run.sh: config $conf; public key $keys_dir/issuer.pem; signing key $keys_dir/issuer.key" >&2
exec mosquitto -c "$conf"
