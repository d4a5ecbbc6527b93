#!/usr/bin/env bash
# The fieldgate demo, end to end on one machine: sets up what it needs on Debian 12 / Raspberry Pi OS
# (system packages, the local broker, .venv), starts the local Event Grid-style broker and simulated
# Modbus and serial devices, and runs the gateway against them with short-lived JWTs.
#
#   ./deploy/demo.sh                       run until Ctrl-C
#   ./deploy/demo.sh --duration 30         run 30 seconds, then stop and print a summary
#   ./deploy/demo.sh --token-lifetime 10   10-second tokens: watch in-session refreshes happen
#   ./deploy/demo.sh --port 18830          the broker's port (loopback only)
#   ./deploy/demo.sh --fleet               three gateways, each its own client at the local issuer
#                                          (oauth2, private_key_jwt); --issuer-port N (default 18840)
#   ./deploy/demo.sh --modbus-port 5020    the simulated Modbus TCP meter's port
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

duration=""
lifetime=60
port=18830
modbus_port=5020
fleet=false
issuer_port=18840
while (($#)); do
  case "$1" in
    --fleet) fleet=true; shift ;;
    --issuer-port) issuer_port="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --token-lifetime) lifetime="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --modbus-port) modbus_port="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

venv=$(deploy/setup-env.sh | tail -n 1)
py="$venv/bin/python"
demo="$root/deploy/.demo"
mkdir -p "$demo/state"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_for() {  # wait_for DESCRIPTION COMMAND...: up to 30 s for COMMAND to succeed
  local what=$1; shift
  for _ in $(seq 300); do "$@" 2>/dev/null && return 0; sleep 0.1; done
  echo "demo: $what did not come up; see $demo/*.log" >&2
  exit 1
}
port_open() { "$py" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$1"; }

# -- fleet mode: the local issuer, a broker trusting only its certificate, three enrolled gateways --------
fleet_demo() {
  local dir="$demo/fleet" iss="http://127.0.0.1:$issuer_port"
  local -A sites=([gw-a]=a [gw-b]=b [gw-c]=c)
  local gateways=(gw-a gw-b gw-c)
  rm -rf "$dir"
  mkdir -p "$dir/keys" "$dir/broker-keys"
  echo "demo: starting the local issuer on $iss ($lifetime-second tokens; log: deploy/.demo/fleet/issuer.log)"
  deploy/issuer/run.sh --port "$issuer_port" --runtime-dir "$dir/issuer" --token-ttl "$lifetime" \
    >"$dir/issuer.log" 2>&1 &
  pids+=($!)
  wait_for "the issuer" port_open "$issuer_port"
  for gw in "${gateways[@]}"; do
    sed -e "s|@GATEWAY@|$gw|g" -e "s|@SITE@|${sites[$gw]}|g" -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" \
      -e "s|@TOKEN_URL@|$iss/token|g" deploy/demo-fleet.toml.in >"$dir/$gw.toml"
    # Enrolment as an operator does it: the gateway makes its key, the issuer gets the public half.
    "$venv/bin/fieldgate" identity new --config "$dir/$gw.toml" >"$dir/$gw.identity.txt"
    sed -n '/-----BEGIN PUBLIC KEY-----/,/-----END PUBLIC KEY-----/p' "$dir/$gw.identity.txt" >"$dir/keys/$gw.pub.pem"
    deploy/issuer/client.sh add "$gw" --public-key "$dir/keys/$gw.pub.pem" --claim "site=${sites[$gw]}" \
      --runtime-dir "$dir/issuer" >/dev/null
    echo "demo: enrolled $gw (site ${sites[$gw]}): key $dir/keys/$gw.key, client $gw at the issuer"
  done
  # The broker gets the issuer's public key only; it grants each gateway its own site's topics.
  cp "$dir/issuer/keys/signing.pem" "$dir/broker-keys/issuer.pem"
  echo "demo: starting the local broker on 127.0.0.1:$port (log: deploy/.demo/fleet/broker.log)"
  deploy/broker/run.sh --port "$port" --runtime-dir "$dir/broker" --keys "$dir/broker-keys" --issuer "$iss" \
    --publish-claim '' --subscribe-claim '' \
    --publish-template 'fleet/${client.attributes.site}/#' \
    --subscribe-template 'fleet/${client.attributes.site}/#' >"$dir/broker.log" 2>&1 &
  pids+=($!)
  wait_for "the broker" port_open "$port"
  echo "demo: running three gateways${duration:+ for $duration s}; Ctrl-C stops them"
  local gw_pids=()
  for gw in "${gateways[@]}"; do
    args=(run --config "$dir/$gw.toml")
    [[ -n "$duration" ]] && args+=(--duration "$duration")
    "$venv/bin/fieldgate" "${args[@]}" >"$dir/$gw.log" 2>&1 &
    gw_pids+=($!)
    pids+=($!)
  done
  local status=0
  for pid in "${gw_pids[@]}"; do wait "$pid" || status=$?; done
  echo
  echo "demo fleet summary"
  for gw in "${gateways[@]}"; do
    local connects refreshes delivered tokens
    tokens=$(grep -c "issued an access token to client '$gw'" "$dir/issuer.log" || true)
    connects=$(grep -c "client '$gw' connect accepted" "$dir/broker.log" || true)
    refreshes=$(grep -c "client '$gw' re-authenticated" "$dir/broker.log" || true)
    delivered=$(grep -o "delivered [0-9]*" "$dir/$gw.log" | tail -n 1 | grep -o "[0-9]*" || echo 0)
    echo "  $gw (site ${sites[$gw]}): $connects connection(s), $refreshes in-session refreshes (AUTH 0x19)," \
      "$tokens tokens from the issuer, $delivered delivered"
  done
  echo "  logs and keys: deploy/.demo/fleet/"
  return "$status"
}
if $fleet; then
  status=0
  fleet_demo || status=$?
  exit "$status"
fi

echo "demo: starting the local broker on 127.0.0.1:$port (log: deploy/.demo/broker.log)"
deploy/broker/run.sh --port "$port" --runtime-dir "$demo/broker" >"$demo/broker.log" 2>&1 &
pids+=($!)
wait_for "the broker" port_open "$port"

echo "demo: starting simulated Modbus meters (TCP :$modbus_port, RS-485 bus on a pty) and serial sensors"
"$py" deploy/sim/modbus_devices.py --link "$demo" --tcp-port "$modbus_port" >"$demo/modbus-sim.log" 2>&1 &
pids+=($!)
"$py" deploy/sim/serial_devices.py --link "$demo" >"$demo/serial-sim.log" 2>&1 &
pids+=($!)
wait_for "the Modbus simulator" test -e "$demo/rs485-1"
wait_for "the serial simulator" test -e "$demo/scale"
wait_for "the Modbus TCP meter" port_open "$modbus_port"

sed -e "s|@ROOT@|$root|g" -e "s|@DEMO@|$demo|g" -e "s|@PORT@|$port|g" -e "s|@LIFETIME@|$lifetime|g" -e "s|@MODBUS_PORT@|$modbus_port|g" \
  deploy/demo.toml.in >"$demo/demo.toml"
"$venv/bin/fieldgate" check-config "$demo/demo.toml"
echo
echo "demo: running the gateway ($lifetime-second tokens); Ctrl-C stops it"
args=(run --config "$demo/demo.toml")
[[ -n "$duration" ]] && args+=(--duration "$duration")
set +e
"$venv/bin/fieldgate" "${args[@]}" 2>&1 | tee "$demo/gateway.log"
status=${PIPESTATUS[0]}
set -e

connects=$(grep -c "connect accepted" "$demo/broker.log" || true)
reauths=$(grep -c "re-authenticated" "$demo/broker.log" || true)
refused=$(grep -c "denied\|refused" "$demo/broker.log" || true)
echo
echo "demo summary"
echo "  broker: $connects connection(s) accepted, $reauths in-session refreshes (AUTH 0x19 -> 0x00), $refused refusals"
grep -o "stats: .*" "$demo/gateway.log" | tail -n 1 | sed 's/^/  gateway: /'
exit "$status"
