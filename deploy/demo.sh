#!/usr/bin/env bash
# The fieldgate demo: sets up what it needs on Debian 12 / Raspberry Pi OS (system packages, .venv),
# then runs the gateway end to end on simulated devices.
#   ./deploy/demo.sh                    run until Ctrl-C
#   ./deploy/demo.sh --duration 30      run 30 seconds, then stop and print a summary
set -euo pipefail
cd "$(dirname "$0")/.."

duration=""
while (($#)); do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

venv=$(deploy/setup-env.sh | tail -n 1)
config=deploy/examples/simulated.toml
"$venv/bin/fieldgate" check-config "$config"
echo
echo "demo: running the simulated devices; each line below is a message the gateway would publish"
args=(run --config "$config" --dry-run)
[[ -n "$duration" ]] && args+=(--duration "$duration")
exec "$venv/bin/fieldgate" "${args[@]}"
