#!/usr/bin/env bash
# Prepares this checkout to run: system packages (Debian 12 / Raspberry Pi OS), then a virtual
# environment in .venv with fieldgate installed. Idempotent: a second run only checks.
#   deploy/setup-env.sh          runtime only
#   deploy/setup-env.sh --dev    plus the test and lint tools
# Prints the venv's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# System packages: Python with venv support, and what the local broker needs (when it is in the tree).
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The unit tests run `systemd-analyze verify` and `security` on systemd/fieldgate.service.
if ((dev)) && ! command -v systemd-analyze >/dev/null; then need+=(systemd); fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ -x deploy/broker/install-deps.sh ]]; then
  deploy/broker/install-deps.sh >&2
fi
[[ -x deploy/issuer/install-deps.sh ]] && deploy/issuer/install-deps.sh >&2

venv="$root/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
# Reinstall only when the project's metadata changed since the last install.
extra=""; ((dev)) && extra="[dev]"
stamp="$venv/.fieldgate-installed${extra}"
digest=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$digest" ]]; then
  echo "setup: installing fieldgate${extra} into $venv" >&2
  log="$venv/pip-install.log"
  # pip's chatter goes to a log; it is shown only when the install fails.
  if ! { "$venv/bin/python" -m pip install --upgrade pip &&
         "$venv/bin/python" -m pip install -e ".${extra}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: installing fieldgate failed (full log: $log)" >&2
    exit 1
  fi
  echo "$digest" >"$stamp"
fi
echo "$venv"
