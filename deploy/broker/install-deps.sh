#!/usr/bin/env bash
# Install the Debian packages the local broker needs: mosquitto itself, the plugin
# headers, OpenSSL (RS256 token signatures), cJSON (claims) and a C toolchain.
# Idempotent: does nothing (and needs no privileges) when everything is present.
set -euo pipefail

packages=(mosquitto mosquitto-dev libmosquitto-dev libssl-dev libcjson-dev gcc make libc6-dev openssl)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
else
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt has none yet or the install fails on stale ones.
if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi
