#!/usr/bin/env bash
# Registers and switches the local issuer's clients; a running issuer sees each change at the next
# token request (the clients are files it reads on every request).
#   deploy/issuer/client.sh add ID --public-key PEM [--claim site=plant-7 ...] [--runtime-dir DIR]
#   deploy/issuer/client.sh disable|enable|remove ID [--runtime-dir DIR]
#   deploy/issuer/client.sh list [--runtime-dir DIR]
# --claim NAME=VALUE sets a string claim, NAME:=JSON any JSON value (e.g. 'groups:=["a","b"]');
# `sub` among them replaces the default sub (the client id).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi
action=$1
shift
client_id=""
if [[ "$action" != "list" ]]; then
    if [[ $# -lt 1 || "$1" == --* ]]; then
        echo "client.sh: $action needs a client id" >&2
        exit 2
    fi
    client_id=$1
    shift
fi
runtime_dir="$here/dev-runtime"
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runtime-dir) runtime_dir=${2:?--runtime-dir needs a value}; shift 2 ;;
        --public-key|--claim) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        *) echo "client.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
clients="$runtime_dir/clients"
case "$action" in
    add|disable|enable|remove)
        exec node "$here/issuer.mjs" "$action-client" --clients "$clients" --client-id "$client_id" "${args[@]}" ;;
    list)
        exec node "$here/issuer.mjs" list-clients --clients "$clients" ;;
    *) echo "client.sh: unknown action $action (add, disable, enable, remove, list)" >&2; exit 2 ;;
esac
