#!/usr/bin/env bash
# Installs the tools wgpulse's tests use when they are missing (Debian-like
# systems, as root), or fails with one line naming what to install.
# `install-deps.sh demo` installs only what `make demo` needs.
set -euo pipefail
purpose="make test"
declare -A pkg_for=(
  [ip]=iproute2
  [ping]=iputils-ping
  [wg]=wireguard-tools
  [wg-quick]=wireguard-tools
  [wireguard-go]=wireguard-go
  [promtool]=prometheus
  [amtool]=prometheus-alertmanager
  [setpriv]=util-linux
  [sysctl]=procps
  [systemd-analyze]=systemd
  [prometheus]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [nft]=nftables
  [tmux]=tmux
  [qemu-system-x86_64]=qemu-system-x86
  [debootstrap]=debootstrap
  [cpio]=cpio
  [dnsmasq]=dnsmasq-base
)
case ${1:-} in
  demo)
    purpose="make demo"
    pkg_for=([ip]=iproute2 [ping]=iputils-ping) ;;
  bench) # the anchors make bench measures wgpulse against, and the lab's tools
    purpose="make bench"
    pkg_for+=([fping]=fping [prometheus-smokeping-prober]=prometheus-smokeping-prober) ;;
esac
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
((${#missing[@]} == 0)) && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing tools: install the packages ${missing[*]} (Debian names) and rerun $purpose" >&2
  exit 1
fi
echo "installing what $purpose needs: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/wgpulse-apt.log 2>&1; then
  echo "apt-get install ${missing[*]} failed (log: /tmp/wgpulse-apt.log): install them by hand and rerun $purpose" >&2
  exit 1
fi
# The Debian packages start services we do not want; tests run their own.
systemctl disable --now prometheus prometheus-alertmanager prometheus-smokeping-prober >/dev/null 2>&1 || true
