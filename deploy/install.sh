#!/usr/bin/env bash
# Installs fieldgate as a systemd service on Raspberry Pi OS / Debian 12 (run as root, from a checkout).
#   deploy/install.sh                     install or upgrade from this checkout, enable, start
#   deploy/install.sh --wheel FILE        ... from a built wheel instead of the checkout
#   deploy/install.sh --wheelhouse DIR    take every package from DIR (no internet: pip --no-index)
#   deploy/install.sh --no-start          install and enable, but do not (re)start the service
#   deploy/install.sh --uninstall         remove the program and the unit; keep config, data and user
#   deploy/install.sh --uninstall --purge ... and remove /etc/fieldgate, /var/lib/fieldgate and the user
#   deploy/install.sh --root DIR          install into DIR as if it were / (for tests and images):
#                                         no apt, no systemctl; the user goes into DIR/etc/passwd
# Idempotent: a second run with the same program changes nothing. An upgrade rebuilds the venv beside
# the old one and swaps it in; config (/etc/fieldgate) and data (/var/lib/fieldgate) are kept.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=""
wheel=""
wheelhouse=""
uninstall=0
purge=0
start=1
python=""
example="$src/drivers/simulated/example.toml"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --root) root=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    --wheel) wheel=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    --wheelhouse) wheelhouse=$(cd "$2" && pwd); shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --example) example="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
((purge && !uninstall)) && { echo "install: --purge goes with --uninstall" >&2; exit 2; }
if [[ $(id -u) -ne 0 ]]; then
  echo "install: run as root (sudo $0 $*)" >&2
  exit 1
fi

user=fieldgate
opt="$root/opt/fieldgate"
etc="$root/etc/fieldgate"
state="$root/var/lib/fieldgate"
unit_dir="$root/etc/systemd/system"
unit="$unit_dir/fieldgate.service"
# systemctl only on the real system with systemd running (not in --root trees, containers, chroots).
systemd=0
[[ -z "$root" && -d /run/systemd/system ]] && systemd=1

say() { echo "install: $*"; }
changed=0
note() { say "$*"; changed=1; }

# -- users and ownership ------------------------------------------------------------------------------
# In a --root tree the user lives in DIR/etc/passwd and DIR/etc/group, with ids free there; files are
# owned by those numeric ids (what they would be on a system booted from that tree).
passwd_file="$root/etc/passwd"
group_file="$root/etc/group"
lookup() { # lookup FILE NAME -> id or empty
  if [[ -z "$root" ]]; then
    if [[ "$1" == *passwd ]]; then id -u "$2" 2>/dev/null || true; else getent group "$2" | cut -d: -f3; fi
  else
    if [[ -f "$1" ]]; then awk -F: -v n="$2" '$1 == n { print $3 }' "$1"; fi
  fi
}
free_system_id() { # below 1000, free in both files
  local id
  for ((id = 999; id > 100; id--)); do
    if ! awk -F: -v i="$id" '$3 == i { found = 1 } END { exit !found }' "$passwd_file" "$group_file" 2>/dev/null; then
      echo "$id"
      return
    fi
  done
  echo "install: no free system id in $passwd_file" >&2
  exit 1
}

ensure_user() {
  if [[ -z "$root" ]]; then
    getent group dialout >/dev/null || { groupadd --system dialout; note "created group dialout"; }
    if ! id -u "$user" >/dev/null 2>&1; then
      useradd --system --user-group --home-dir /var/lib/fieldgate --no-create-home \
        --shell /usr/sbin/nologin --groups dialout --comment "fieldgate edge gateway" "$user"
      note "created system user $user (groups: $user, dialout)"
    elif ! id -nG "$user" | tr ' ' '\n' | grep -qx dialout; then
      usermod --append --groups dialout "$user"
      note "added $user to dialout"
    fi
    return
  fi
  mkdir -p "$root/etc"
  for f in "$passwd_file" "$group_file"; do [[ -e "$f" ]] || : >"$f"; done
  if [[ -z "$(lookup "$group_file" dialout)" ]]; then
    echo "dialout:x:$(getent group dialout | cut -d: -f3 || echo 20):" >>"$group_file"
    note "created group dialout in $group_file"
  fi
  if [[ -z "$(lookup "$passwd_file" "$user")" ]]; then
    local id
    id=$(free_system_id)
    echo "$user:x:$id:" >>"$group_file"
    echo "$user:x:$id:$id:fieldgate edge gateway:/var/lib/fieldgate:/usr/sbin/nologin" >>"$passwd_file"
    note "created system user $user ($id) in $passwd_file"
  fi
  if ! awk -F: -v u="$user" '$1 == "dialout" { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 }
        END { exit !f }' "$group_file"; then
    awk -F: -v OFS=: -v u="$user" '$1 == "dialout" { $4 = ($4 == "" ? u : $4 "," u) } { print }' \
      "$group_file" >"$group_file.new" && mv "$group_file.new" "$group_file"
    note "added $user to dialout in $group_file"
  fi
}

# set_attr PATH MODE UID GID: change owner and mode only when they differ (a re-run touches nothing).
set_attr() {
  local path=$1 mode=$2 uid=$3 gid=$4 current
  current=$(stat -c '%a %u %g' "$path")
  if [[ "$current" != "${mode#0} $uid $gid" ]]; then
    chown "$uid:$gid" "$path"
    chmod "$mode" "$path"
    note "$path: mode $mode, owner $uid:$gid"
  fi
}
ensure_dir() { # ensure_dir PATH MODE UID GID
  [[ -d "$1" ]] || { mkdir -p "$1"; note "created $1"; }
  set_attr "$@"
}
# install_file SRC DEST MODE UID GID: copy when the content differs.
install_file() {
  if ! cmp -s "$1" "$2"; then
    install -m "$3" -o "$4" -g "$5" "$1" "$2"
    note "installed $2"
  fi
  set_attr "$2" "$3" "$4" "$5"
}

# -- uninstall ----------------------------------------------------------------------------------------
if ((uninstall)); then
  if ((systemd)); then
    systemctl disable --now fieldgate.service 2>/dev/null || true
  fi
  [[ -e "$unit" ]] && { rm -f "$unit"; say "removed $unit"; }
  ((systemd)) && systemctl daemon-reload
  [[ -e "$opt" ]] && { rm -rf "$opt"; say "removed $opt"; }
  if [[ "$(readlink "$root/usr/local/bin/fieldgate" 2>/dev/null)" == /opt/fieldgate/venv/bin/fieldgate ]]; then
    rm -f "$root/usr/local/bin/fieldgate"
  fi
  if ((purge)); then
    rm -rf "$etc" "$state"
    say "removed $etc and $state"
    if [[ -z "$root" ]]; then
      id -u "$user" >/dev/null 2>&1 && userdel "$user" && say "removed user $user"
    else
      for f in "$passwd_file" "$group_file"; do
        [[ -f "$f" ]] && awk -F: -v u="$user" '$1 != u' "$f" >"$f.new" && mv "$f.new" "$f"
      done
      awk -F: -v OFS=: -v u="$user" '$1 == "dialout" { n = split($4, m, ","); $4 = "";
            for (i = 1; i <= n; i++) if (m[i] != u) $4 = ($4 == "" ? m[i] : $4 "," m[i]) } { print }' \
        "$group_file" >"$group_file.new" && mv "$group_file.new" "$group_file"
      say "removed user $user from $root/etc"
    fi
  else
    say "kept $etc (config, keys) and $state (stored messages); --uninstall --purge removes them"
  fi
  exit 0
fi

# -- system packages ----------------------------------------------------------------------------------
if [[ -z "$python" ]]; then
  # The Debian interpreter, not one under /root or /home: the sandbox hides those from the service.
  python=/usr/bin/python3
fi
need=()
command -v "$python" >/dev/null || need+=(python3)
"$python" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  if [[ -n "$root" ]]; then
    echo "install: the host needs ${need[*]} to build the venv: apt-get install ${need[*]}" >&2
    exit 1
  fi
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# -- user, directories --------------------------------------------------------------------------------
ensure_user
uid=$(lookup "$passwd_file" "$user")
gid=$(lookup "$group_file" "$user")
ensure_dir "$opt" 0755 0 0
ensure_dir "$etc" 0750 0 "$gid"
ensure_dir "$state" 0750 "$uid" "$gid"

# -- the program: a venv built beside the old one, swapped in when the source changed ------------------
if [[ -n "$wheel" ]]; then
  [[ -f "$wheel" ]] || { echo "install: no such wheel $wheel" >&2; exit 1; }
  package="$wheel"
  digest=$(sha256sum "$wheel" | cut -c1-64)
else
  package="$src"
  digest=$(cd "$src" && find pyproject.toml gateway drivers systemd -type f \
    \( -name '*.py' -o -name '*.toml' -o -name '*.service' -o -name '*.typed' \) -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
fi
digest="$digest $("$python" -c 'import sys; print(sys.version.split()[0])')"
stamp="$opt/venv/.fieldgate-source"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$digest" ]]; then
  say "building the virtual environment (fieldgate with the metrics extra)"
  rm -rf "$opt/venv.new"
  "$python" -m venv "$opt/venv.new"
  pip_args=(--quiet --disable-pip-version-check --no-warn-script-location)
  [[ -n "$wheelhouse" ]] && pip_args+=(--no-index --find-links "$wheelhouse")
  # Build in a scratch folder: the checkout may belong to another user and must stay clean.
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  if [[ -z "$wheel" ]]; then
    cp -r "$src/pyproject.toml" "$src/README.md" "$src/gateway" "$src/drivers" "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    package="$build"
  fi
  "$opt/venv.new/bin/python" -m pip install "${pip_args[@]}" "${package}[metrics]"
  echo "$digest" >"$opt/venv.new/.fieldgate-source"
  rm -rf "$opt/venv.old"
  [[ -d "$opt/venv" ]] && mv "$opt/venv" "$opt/venv.old"
  # Built beside the running one, so the service keeps its files until it restarts. A venv records its
  # path in its scripts: point them at the final place (regular text files only, never the symlinks).
  for f in "$opt/venv.new/bin/"*; do
    if [[ -f "$f" && ! -L "$f" ]] && grep -Iq "$opt/venv.new" "$f"; then
      sed -i "s|$opt/venv.new|$opt/venv|g" "$f"
    fi
  done
  [[ -d "$opt/venv" ]] && mv "$opt/venv" "$opt/venv.old"
  mv "$opt/venv.new" "$opt/venv"
  rm -rf "$opt/venv.old"
  note "installed $("$opt/venv/bin/fieldgate" --version) into $opt/venv"
fi
install_file "$src/README.md" "$opt/README.md" 0644 0 0
# `fieldgate` on the PATH (e.g. `sudo fieldgate status`); the target as the installed system sees it.
ensure_dir "$root/usr/local/bin" 0755 0 0
if [[ "$(readlink "$root/usr/local/bin/fieldgate" 2>/dev/null)" != /opt/fieldgate/venv/bin/fieldgate ]]; then
  ln -sfn /opt/fieldgate/venv/bin/fieldgate "$root/usr/local/bin/fieldgate"
  note "linked $root/usr/local/bin/fieldgate"
fi

# -- config -------------------------------------------------------------------------------------------
if [[ ! -e "$etc/fieldgate.toml" ]]; then
  install -m 0640 -o 0 -g "$gid" "$example" "$etc/fieldgate.toml"
  note "put an example config into $etc/fieldgate.toml (edit it: your devices, your [uplink])"
fi
# Config, keys and token files: readable by the service's group only, writable by root only.
while IFS= read -r -d '' file; do
  set_attr "$file" 0640 0 "$gid"
done < <(find "$etc" -type f -print0)

# -- the unit -----------------------------------------------------------------------------------------
ensure_dir "$unit_dir" 0755 0 0
unit_changed=$changed
changed=0
install_file "$src/systemd/fieldgate.service" "$unit" 0644 0 0
program_or_unit_changed=$((changed || unit_changed))
changed=$program_or_unit_changed

# -- enable and start ---------------------------------------------------------------------------------
config_ok=0
# As the service's user, not as root: root reads any key or secret file, so a check as root would pass a
# config the service then cannot read.
as_service=()
if [[ -z "$root" ]] && ((EUID == 0)); then
  if command -v runuser >/dev/null; then as_service=(runuser -u "$user" --); else as_service=(setpriv --reuid="$user" --regid="$user" --init-groups); fi
fi
check=$(PYTHONDONTWRITEBYTECODE=1 "${as_service[@]}" "$opt/venv/bin/fieldgate" check-config "$etc/fieldgate.toml" 2>&1) && config_ok=1
if ((systemd)); then
  systemctl daemon-reload
  systemctl enable fieldgate.service >/dev/null 2>&1 && say "enabled fieldgate.service"
  if ((start)) && ((config_ok)) && ! grep -q 'no \[uplink\]' <<<"$check"; then
    if ((program_or_unit_changed)) || ! systemctl is-active --quiet fieldgate.service; then
      systemctl restart fieldgate.service && say "started fieldgate.service"
    fi
  else
    say "not starting: the config needs your devices and an [uplink] first"
  fi
elif [[ -n "$root" ]]; then
  say "installed into $root (no systemctl in --root mode)"
else
  say "systemd is not running here: start it yourself with $opt/venv/bin/fieldgate run --config $etc/fieldgate.toml"
fi
if ! ((config_ok)); then
  say "the config has problems:"
  while IFS= read -r line; do echo "  $line"; done <<<"$check"
fi
((changed)) || say "nothing to change: fieldgate is installed and up to date"

cat <<EOF

Next steps:
  sudoedit /etc/fieldgate/fieldgate.toml                  # your devices and the [uplink]
  sudo -u fieldgate fieldgate check-config /etc/fieldgate/fieldgate.toml
  sudo systemctl restart fieldgate                        # or: systemctl reload fieldgate (devices only)
  journalctl -u fieldgate -f                              # follow the logs
  journalctl -u fieldgate -p err                          # errors only
  sudo fieldgate status                                   # uplink, token, devices at a glance
EOF
