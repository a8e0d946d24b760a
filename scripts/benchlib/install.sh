# shellcheck shell=bash
# Minimal apt helper for scripts/bench, used only when scripts/lib/install.sh
# (the project's shared helper) is absent.  Defines ensure_apt_packages PKG...:
# installs the Debian packages that are not installed yet, running
# `apt-get update` at most once per process, non-interactively.  Needs root
# only when something is missing.

_BENCH_APT_UPDATED=${_BENCH_APT_UPDATED:-0}

ensure_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        return 1
    fi
    echo "bench: installing ${missing[*]}" >&2
    if [ "$_BENCH_APT_UPDATED" != 1 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        _BENCH_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
