#!/usr/bin/env bash
# Install the condition-monitor edge agent on Raspberry Pi OS (Debian bookworm or later).
#
#   sudo deploy/install.sh [--bundle DIR] [--with-broker] [--no-start] [--dry-run] [--arch NAME] [--prefix DIR]
#
# Creates the cm-edge system user, a venv in /opt/cm-edge with only the `edge` extra (no TensorFlow),
# /etc/cm/edge.toml from the example (an existing config is never overwritten), /var/lib/cm-edge, and the
# systemd unit, and enables the service once `cm-edge --check` accepts the config and bundle. Safe to run
# again: every step checks before it changes anything, so re-running upgrades the package in place.
# 64-bit Pi OS (arm64) runs the model with LiteRT; 32-bit Pi OS (armhf) with Debian's python3-numpy and
# the numpy interpreter. --dry-run prints the steps without changing the system; --arch NAME plans for
# another Debian architecture than this system's (with --dry-run: what would a Pi get); --prefix DIR plans
# the venv in DIR instead of /opt/cm-edge (dry run only: the systemd unit runs /opt/cm-edge/venv).
set -euo pipefail

PREFIX=/opt/cm-edge
CONFIG_DIR=/etc/cm
STATE_DIR=/var/lib/cm-edge
SERVICE_USER=cm-edge
UNIT=/etc/systemd/system/cm-edge.service
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

DRY_RUN=0
START=1
BUNDLE=""
WITH_BROKER=0
PREFIX_GIVEN=0
ARCH="$(dpkg --print-architecture 2>/dev/null || echo unknown)"  # the userland: what pip's wheels must fit
MACHINE="$(uname -m)"  # the kernel: 32-bit Pi OS boots a 64-bit kernel on a Pi 3 or 4

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-start) START=0 ;;
        --with-broker) WITH_BROKER=1 ;;
        --arch)
            [[ $# -ge 2 ]] || { echo "install.sh: --arch needs a Debian architecture (arm64, armhf, amd64)" >&2; exit 2; }
            ARCH="$2"; MACHINE=""; shift ;;
        --bundle)
            [[ $# -ge 2 ]] || { echo "install.sh: --bundle needs a directory" >&2; exit 2; }
            BUNDLE="$2"; shift ;;
        --prefix)
            [[ $# -ge 2 ]] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
            PREFIX="$2"; PREFIX_GIVEN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '    + %s\n' "$*"
    else
        "$@"
    fi
}

[[ -f "$SRC/pyproject.toml" ]] || { echo "install.sh: $SRC/pyproject.toml not found: run it from the source tree" >&2; exit 1; }
# A model bundle (cm-train fit) or a baseline card (cm-train baseline: the card alone, no model yet) both hold
# model_card.json; cm-edge --check below validates either, naming the key that is wrong.
if [[ -n "$BUNDLE" && ! -f "$BUNDLE/model_card.json" ]]; then
    echo "install.sh: --bundle $BUNDLE: expected a bundle directory holding model_card.json" >&2; exit 1
fi
if [[ $PREFIX_GIVEN -eq 1 && $DRY_RUN -eq 0 ]]; then
    echo "install.sh: --prefix $PREFIX: only with --dry-run (the systemd unit runs /opt/cm-edge/venv/bin/cm-edge)" >&2; exit 2
fi
if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    echo "install.sh: run as root (sudo), or with --dry-run to see the steps" >&2; exit 1
fi
# What runs the model on this architecture (`make pi-check ARCH=arm64|armhf` proves both under emulation).
PIP=("$PREFIX/venv/bin/pip")
unsupported() {
    echo "install.sh: unsupported architecture $ARCH${MACHINE:+ ($MACHINE)}: the agent runs on arm64 (64-bit" \
         "Raspberry Pi OS, recommended), armhf on ARMv7 or later (32-bit Raspberry Pi OS on a Pi 2, 3, 4, 5 or" \
         "Zero 2) and amd64; a Pi 1 or Pi Zero (ARMv6) is not supported" >&2
    exit 1
}
case "$ARCH" in
    arm64|amd64)
        RUNTIME="LiteRT (ai-edge-litert wheel)"; SYSTEM_NUMPY=0 ;;
    armhf)
        # No wheel of ai-edge-litert, tflite-runtime or numpy >= 1.26 exists for 32-bit Pi OS, nor of cffi,
        # which cryptography (signed bundles) needs: Debian's python3-numpy and python3-cryptography serve.
        RUNTIME="the numpy interpreter over Debian's python3-numpy"; SYSTEM_NUMPY=1
        case "$MACHINE" in
            armv6l) unsupported ;;
            # A 64-bit kernel says aarch64, and pip's environment markers would ask for arm64's packages:
            # pip runs with the 32-bit personality, as the userland is.
            aarch64) PIP=(setarch linux32 "$PREFIX/venv/bin/pip") ;;
        esac ;;
    *) unsupported ;;
esac

[[ $DRY_RUN -eq 1 ]] && step "dry run: nothing is changed"
step "architecture $ARCH${MACHINE:+ ($MACHINE)}: the model runs with $RUNTIME"

step "system packages"
packages=(python3 python3-venv)
[[ $SYSTEM_NUMPY -eq 1 ]] && packages+=(python3-numpy python3-cryptography)
[[ $WITH_BROKER -eq 1 ]] && packages+=(mosquitto mosquitto-clients)
note "needed: ${packages[*]}"
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    run apt-get update
    run apt-get install -y --no-install-recommends "${missing[@]}"
else
    note "already installed: ${packages[*]}"
fi

step "service user $SERVICE_USER (member of dialout for the serial port)"
if id "$SERVICE_USER" >/dev/null 2>&1; then
    note "exists"
    id -nG "$SERVICE_USER" | grep -qw dialout || run usermod -a -G dialout "$SERVICE_USER"
else
    run useradd --system --user-group --groups dialout --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi

step "virtual environment $PREFIX/venv with condition-monitor[edge]"
if [[ $SYSTEM_NUMPY -eq 1 ]]; then
    # The venv sees Debian's numpy and cryptography; pip keeps them, as they satisfy the armv7l floors in pyproject.toml.
    grep -qs "include-system-site-packages = true" "$PREFIX/venv/pyvenv.cfg" ||
        run python3 -m venv --system-site-packages "$PREFIX/venv"
else
    [[ -x "$PREFIX/venv/bin/python" ]] || run python3 -m venv "$PREFIX/venv"
fi
run "${PIP[@]}" install --quiet --upgrade pip
run "${PIP[@]}" install --quiet --upgrade "$SRC[edge]"
run install -d -m 0755 "$PREFIX/deploy"
run install -m 0644 "$SRC/deploy/README.md" "$SRC/deploy/99-cm-sensor.rules" "$SRC/deploy/edge.example.toml" \
    "$PREFIX/deploy/"

step "configuration $CONFIG_DIR/edge.toml"
run install -d -m 0755 "$CONFIG_DIR"
if [[ -e "$CONFIG_DIR/edge.toml" ]]; then
    note "kept the existing $CONFIG_DIR/edge.toml (the new example is $PREFIX/deploy/edge.example.toml)"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$SRC/deploy/edge.example.toml" "$CONFIG_DIR/edge.toml"
fi

step "state directory $STATE_DIR (outbox, recordings, model bundle)"
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
if [[ -n "$BUNDLE" ]]; then
    if grep -Eq '"kind": *"baseline"' "$BUNDLE/model_card.json"; then
        note "$BUNDLE is a baseline card: no model yet; the agent reports learning until a model replaces it"
    fi
    # Copy beside the old bundle, then swap, so a half-copied bundle is never the live one.
    run rm -rf "$STATE_DIR/bundle.new" "$STATE_DIR/bundle.old"
    run cp -r "$BUNDLE" "$STATE_DIR/bundle.new"
    run chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR/bundle.new"
    [[ -e "$STATE_DIR/bundle" ]] && run mv "$STATE_DIR/bundle" "$STATE_DIR/bundle.old"
    run mv "$STATE_DIR/bundle.new" "$STATE_DIR/bundle"
    run rm -rf "$STATE_DIR/bundle.old"
fi

if [[ $WITH_BROKER -eq 1 ]]; then
    step "Mosquitto on this Pi: /etc/mosquitto/conf.d/cm.conf and /etc/mosquitto/cm.acl"
    run install -m 0644 "$SRC/deploy/mosquitto/cm.conf" /etc/mosquitto/conf.d/cm.conf
    run install -m 0644 "$SRC/deploy/mosquitto/acl" /etc/mosquitto/cm.acl
    if [[ ! -e /etc/mosquitto/cm.passwd ]]; then
        run install -m 0640 -o root -g mosquitto /dev/null /etc/mosquitto/cm.passwd
    fi
    note "add users, then restart the broker:"
    note "  sudo mosquitto_passwd /etc/mosquitto/cm.passwd <device_id>    # and homeassistant"
    note "  sudo systemctl restart mosquitto"
fi

step "systemd unit $UNIT"
run install -m 0644 "$SRC/deploy/cm-edge.service" "$UNIT"
run systemctl daemon-reload

step "check the configuration and the bundle, then enable the service"
check=(runuser -u "$SERVICE_USER" -- "$PREFIX/venv/bin/cm-edge" --config "$CONFIG_DIR/edge.toml" --check)
if [[ $DRY_RUN -eq 1 ]]; then
    run "${check[@]}"
    note "if the check passes:"
    run systemctl enable cm-edge.service
    [[ $START -eq 1 ]] && run systemctl restart cm-edge.service
elif "${check[@]}"; then
    run systemctl enable cm-edge.service
    if [[ $START -eq 1 ]]; then
        run systemctl restart cm-edge.service
        note "started: journalctl -u cm-edge -f"
    fi
else
    # A unit that cannot start must not be enabled: it would fail at every boot.
    note "cm-edge --check failed (above): the service is not enabled and not started."
    note "Edit $CONFIG_DIR/edge.toml (and install a bundle with --bundle DIR), then"
    note "  sudo systemctl enable --now cm-edge && journalctl -u cm-edge -f"
fi
note "serial port: see $PREFIX/deploy/99-cm-sensor.rules for a stable /dev/cm-sensor"
