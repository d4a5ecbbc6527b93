#!/usr/bin/env bash
# Install what the local issuer needs: Node.js (18 or newer) with npm, openssl (key generation), and
# node-oidc-provider at the version pinned in package-lock.json, into deploy/issuer/node_modules.
# Idempotent: does nothing (needs no privileges, no network) when everything is present and current.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-deps: need root or sudo to run: $*" >&2
        exit 1
    fi
}

# A Node.js from elsewhere (e.g. NodeSource, which bundles npm) is fine: only install what is missing.
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when apt has none yet or the install fails on stale ones.
    if ! as_root apt-get install -y --no-install-recommends "${missing[@]}"; then
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 18 )); then
    echo "install-deps: node $(node --version) is too old, the issuer needs Node.js 18 or newer" >&2
    exit 1
fi

# node_modules is current when it was installed from this very lockfile.
stamp="$here/node_modules/.fieldgate-lock-sha256"
digest=$(sha256sum "$here/package-lock.json" | cut -c1-64)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$digest" ]]; then
    echo "install-deps: installing node-oidc-provider into $here/node_modules" >&2
    log=$(mktemp)
    if ! (cd "$here" && npm ci --omit=dev --no-audit --no-fund) >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        echo "install-deps: npm ci failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$digest" >"$stamp"
fi
