#!/usr/bin/env bash
# Programs the tests start as real peers, all from Debian's packages: an HTTP proxy
# (tinyproxy), a SOCKS5 proxy (microsocks) and a headless browser (chromium) that loads
# `eefetch serve`'s page. Idempotent: when all are on PATH it only says so. Otherwise it
# installs the missing ones with apt-get when run as root (as on a fresh CI machine), waiting
# up to 10 minutes for another apt to finish, or prints the command to run and fails.
set -euo pipefail
programs=(tinyproxy microsocks chromium)
missing=()
for program in "${programs[@]}"; do
  if ! command -v "$program" >/dev/null 2>&1; then
    missing+=("$program")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system_deps: ${programs[*]} already installed" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system_deps: missing ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: missing ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "system_deps: apt-get update" >&2
apt-get -o DPkg::Lock::Timeout=600 update -qq
echo "system_deps: apt-get install ${missing[*]}" >&2
# The packages' services are not wanted: the tests start their own proxies on free ports.
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for program in "${missing[@]}"; do
  if ! command -v "$program" >/dev/null 2>&1; then
    echo "system_deps: $program is still missing after apt-get install" >&2
    exit 1
  fi
done
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tinyproxy 2>/dev/null; then
  echo "system_deps: stopping the tinyproxy service the package started" >&2
  systemctl disable --now tinyproxy >/dev/null 2>&1 || true
fi
echo "system_deps: installed ${missing[*]}" >&2
