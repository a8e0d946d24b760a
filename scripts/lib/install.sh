# shellcheck shell=bash
# Shared install helpers for scripts/test, scripts/demo and scripts/bench.
#
# Design: a fresh Debian 12 machine (as root, no stdin) must end up with what the
# project needs, and a machine that already has it must not be touched: an apt
# package is installed only when the binary it provides is missing (`apt-get
# update` at most once per run), and the venv is reused and re-installed into
# only when setup.cfg/setup.py or the requested extras changed (a stamp file).
# Every function says what it does on stderr.  Source this file; don't run it.

: "${REPO_ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
export DEBIAN_FRONTEND=noninteractive

_APT_UPDATED=0

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# The command that tells whether an apt package is already there.
_apt_binary_for() {
    case "$1" in
        etcd-server)  echo etcd ;;
        etcd-client)  echo etcdctl ;;
        dnsmasq-base) echo dnsmasq ;;
        iproute2)     echo ip ;;
        openssl)      echo openssl ;;
        haproxy)      echo haproxy ;;
        iperf3)       echo iperf3 ;;
        procps)       echo ps ;;
        curl)         echo curl ;;
        util-linux)   echo unshare ;;
        mount)        echo mount ;;
        python3)      echo python3 ;;
        *)            echo "" ;;
    esac
}

_pkg_present() {
    local pkg=$1 bin
    bin=$(_apt_binary_for "$pkg")
    if [ -n "$bin" ]; then
        command -v "$bin" >/dev/null 2>&1 && return 0
        # a binary in sbin may be off a non-root PATH
        [ -x "/usr/sbin/$bin" ] || [ -x "/sbin/$bin" ]
        return
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'
}

_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $*"
    fi
}

apt_update_once() {
    [ "$_APT_UPDATED" -eq 1 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install the packages by hand"
    say "apt-get update"
    _as_root apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 || die "apt-get update failed"
    _APT_UPDATED=1
}

# ensure_apt_packages PKG... : apt-get install the ones whose binary is missing.
ensure_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        _pkg_present "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "apt packages present: $*"
        return 0
    fi
    apt_update_once
    say "apt-get install ${missing[*]}"
    _as_root apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# require_commands CMD... : fail unless every command is on PATH.
require_commands() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "$c is still missing after install"
    done
}

_venv_works() { [ -x "$1/bin/python" ] && "$1/bin/python" -c 'import sys' >/dev/null 2>&1; }

# ensure_venv [DIR] [EXTRAS]: create/reuse a venv (default $REPO_ROOT/.venv) and
# `pip install -e ".[EXTRAS]"` the project into it (EXTRAS default: test).
ensure_venv() {
    local venv=${1:-$REPO_ROOT/.venv} extras=${2-test} spec stamp want
    command -v python3 >/dev/null 2>&1 || ensure_apt_packages python3
    if ! _venv_works "$venv"; then
        say "creating venv $venv"
        rm -rf "$venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            say "python3 -m venv failed: installing python3-venv"
            rm -rf "$venv"
            apt_update_once
            _as_root apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
                python3-venv >&2 || die "apt-get install python3-venv failed"
            python3 -m venv "$venv" >&2 || die "python3 -m venv $venv failed"
        fi
    else
        say "reusing venv $venv"
    fi
    spec="."
    [ -n "$extras" ] && spec=".[${extras}]"
    want="$(cat "$REPO_ROOT/setup.cfg" "$REPO_ROOT/setup.py" 2>/dev/null | cksum) $spec $("$venv/bin/python" -V 2>&1)"
    stamp="$venv/.etcd-gatewayd-installed"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "project already installed in $venv ($spec)"
        return 0
    fi
    say "pip install -e '$spec' into $venv"
    (cd "$REPO_ROOT" && "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec") >&2 \
        || die "pip install -e '$spec' failed"
    printf '%s' "$want" > "$stamp"
}
