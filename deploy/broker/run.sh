#!/usr/bin/env bash
# Runs the local Event Grid-style broker in the foreground, bound to 127.0.0.1 only: mosquitto 2.0
# with the fieldgate auth plugin (custom JWT authentication and topic grants) behind
# quota_proxy.py, which owns the public port and enforces Event Grid's per-session quotas and
# limits with Event Grid's reason codes (mosquitto's plugin API cannot send them: see README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<'EOF'
Usage: deploy/broker/run.sh [options]

Runs mosquitto with the fieldgate JWT auth plugin behind the fieldgate quota proxy, in the
foreground on 127.0.0.1. Builds the plugin if needed and creates development keys if there are
none. Every limit's default is Event Grid's documented value (see deploy/broker/README.md).

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
  --runtime-dir DIR    where mosquitto.conf, mosquitto.pid and quota-stats.json go
                       (default: a new temporary directory)
  --verbose            mosquitto debug logging (every packet and every allowed publish)
  -h, --help           this help

Event Grid quotas and limits (per session = per client id), enforced by the quota proxy:
  --publish-rate N     inbound publishes per second (default 1000)
  --byte-rate N        inbound PUBLISH bytes per second (default 1000000)
  --inflight-messages N  QoS 1 publishes not yet acknowledged (default 1000)
  --inflight-bytes N   bytes of those publishes (default 65536)
  --throttle MODE      answer to a publish over a quota above: 'puback' (PUBACK 0x97, the
                       publish is dropped; QoS 0 ones are dropped silently) or 'disconnect'
                       (DISCONNECT 0x97) (default puback)
  --topic-bytes N      longest topic name / filter in bytes (default 256; longer: PUBACK 0x90,
                       SUBACK 0x8F)
  --topic-levels N     most topic levels (default 15, the current quota page; older pages say 8)
  --subscriptions N    subscriptions per session (default 50; more: SUBACK 0x97)
  --subscribe-rate N   SUBSCRIBE packets per second (default 5; more: SUBACK 0x97)
  --filters-per-subscribe N  filters in one SUBSCRIBE (default 10; more: SUBACK 0x97 for each)
  --allow-retain       accept retained publishes (default: refused with DISCONNECT 0x9A)
  --no-quotas          no proxy: mosquitto listens on --port itself (plugin checks only)
Token limits, enforced by the plugin (refused with CONNACK 0x87):
  --max-auth-data N    largest Authentication Data (token) in bytes (default 8192)
  --max-sub-length N   longest `sub` (authentication name) in characters (default 128)
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
publish_rate=1000
byte_rate=1000000
inflight_messages=1000
inflight_bytes=65536
throttle=puback
topic_bytes=256
topic_levels=15
subscriptions=50
subscribe_rate=5
filters_per_subscribe=10
allow_retain=false
quotas=true
max_auth_data=8192
max_sub_length=128

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
        --publish-rate) need_value "$@"; publish_rate=$2; shift 2 ;;
        --byte-rate) need_value "$@"; byte_rate=$2; shift 2 ;;
        --inflight-messages) need_value "$@"; inflight_messages=$2; shift 2 ;;
        --inflight-bytes) need_value "$@"; inflight_bytes=$2; shift 2 ;;
        --throttle) need_value "$@"; throttle=$2; shift 2 ;;
        --topic-bytes) need_value "$@"; topic_bytes=$2; shift 2 ;;
        --topic-levels) need_value "$@"; topic_levels=$2; shift 2 ;;
        --subscriptions) need_value "$@"; subscriptions=$2; shift 2 ;;
        --subscribe-rate) need_value "$@"; subscribe_rate=$2; shift 2 ;;
        --filters-per-subscribe) need_value "$@"; filters_per_subscribe=$2; shift 2 ;;
        --allow-retain) allow_retain=true; shift ;;
        --no-quotas) quotas=false; shift ;;
        --max-auth-data) need_value "$@"; max_auth_data=$2; shift 2 ;;
        --max-sub-length) need_value "$@"; max_sub_length=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "run.sh: --port must be 1..65535, got '$port'" >&2
    exit 2
fi
for pair in "publish-rate=$publish_rate" "byte-rate=$byte_rate" "inflight-messages=$inflight_messages" \
        "inflight-bytes=$inflight_bytes" "topic-bytes=$topic_bytes" "topic-levels=$topic_levels" \
        "subscriptions=$subscriptions" "subscribe-rate=$subscribe_rate" \
        "filters-per-subscribe=$filters_per_subscribe" "max-auth-data=$max_auth_data" \
        "max-sub-length=$max_sub_length"; do
    if ! [[ "${pair#*=}" =~ ^[0-9]+$ ]] || (( ${pair#*=} < 1 )); then
        echo "run.sh: --${pair%%=*} must be a positive whole number, got '${pair#*=}'" >&2
        exit 2
    fi
done
if [[ "$throttle" != puback && "$throttle" != disconnect ]]; then
    echo "run.sh: --throttle must be 'puback' or 'disconnect', got '$throttle'" >&2
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

# With the proxy, mosquitto listens on a free loopback port of its own and speaks plain MQTT:
# the proxy owns --port and terminates TLS.
mosquitto_port=$port
if $quotas; then
    mosquitto_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

{
    echo "# generated by deploy/broker/run.sh"
    # mosquitto started as root would switch to the 'mosquitto' user and lose access to the keys.
    echo "user $(id -un)"
    echo "per_listener_settings false"
    echo "allow_anonymous false"
    # Event Grid needs a client id (the session name) and assigns none.
    echo "allow_zero_length_clientid false"
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
    # mosquitto drops QoS 1 messages queued beyond 1000 for a subscriber that lags; the local broker's
    # subscribers are tests and demos that count every message, so let them lag without losses.
    echo "max_queued_messages 100000"
    # Event Grid refuses retained publishes unless its retain preview is on: CONNACK says so too.
    $allow_retain || echo "retain_available false"
    echo
    echo "listener $mosquitto_port 127.0.0.1"
    echo "max_qos 1"
    echo "max_topic_alias 10"
    if $tls && ! $quotas; then
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
    echo "plugin_opt_max_auth_data $max_auth_data"
    echo "plugin_opt_max_sub_length $max_sub_length"
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
if ! $quotas; then
    echo "run.sh: no quota proxy (--no-quotas): mosquitto serves port $port itself" >&2
    exec mosquitto -c "$conf"
fi
proxy=(python3 "$here/quota_proxy.py" --port "$port" --upstream-port "$mosquitto_port"
    --mosquitto-conf "$conf" --pid-file "$runtime_dir/mosquitto.pid" --stats-file "$runtime_dir/quota-stats.json"
    --publish-rate "$publish_rate" --byte-rate "$byte_rate" --inflight-messages "$inflight_messages"
    --inflight-bytes "$inflight_bytes" --throttle "$throttle" --topic-bytes "$topic_bytes"
    --topic-levels "$topic_levels" --subscriptions "$subscriptions" --subscribe-rate "$subscribe_rate"
    --filters-per-subscribe "$filters_per_subscribe")
$allow_retain && proxy+=(--allow-retain)
$tls && proxy+=(--tls-cert "$keys_dir/server.pem" --tls-key "$keys_dir/server.key")
echo "run.sh: quota stats $runtime_dir/quota-stats.json; mosquitto on internal port $mosquitto_port" >&2
# The proxy starts mosquitto as its child and stops it when it stops (also if it is killed).
exec "${proxy[@]}"
