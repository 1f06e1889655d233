#!/usr/bin/env bash
# Programs the tests start as real peers, all from Debian's packages: an HTTP proxy
# (tinyproxy), a SOCKS5 proxy (microsocks), a headless browser (chromium) that loads
# `eefetch serve`'s page, and PostgreSQL's server programs (initdb, pg_ctl: the tests run their
# own throwaway servers, see tests/pg.py). Idempotent: when all are there it only says so.
# Otherwise it installs the missing packages with apt-get when run as root (as on a fresh CI
# machine), waiting up to 10 minutes for another apt to finish, or prints the command to run
# and fails.
set -euo pipefail
programs=(tinyproxy microsocks chromium)

have_postgresql() {
  local bin
  for bin in /usr/lib/postgresql/*/bin; do
    if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ]; then
      return 0
    fi
  done
  return 1
}

missing=()
for program in "${programs[@]}"; do
  if ! command -v "$program" >/dev/null 2>&1; then
    missing+=("$program")
  fi
done
if ! have_postgresql; then
  missing+=(postgresql)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system_deps: ${programs[*]} postgresql already installed" >&2
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
# The packages' services are not wanted: the tests start their own proxies and databases on
# free ports. Debian's postgresql would make and start a cluster "main" on port 5432.
mkdir -p /etc/postgresql-common/createcluster.d
if [ ! -e /etc/postgresql-common/createcluster.d/eefetch-no-main.conf ]; then
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/eefetch-no-main.conf
fi
echo "system_deps: apt-get update" >&2
apt-get -o DPkg::Lock::Timeout=600 update -qq
echo "system_deps: apt-get install ${missing[*]}" >&2
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for program in "${missing[@]}"; do
  if [ "$program" = postgresql ]; then
    if ! have_postgresql; then
      echo "system_deps: PostgreSQL's server programs are still missing after apt-get install" >&2
      exit 1
    fi
  elif ! command -v "$program" >/dev/null 2>&1; then
    echo "system_deps: $program is still missing after apt-get install" >&2
    exit 1
  fi
done
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tinyproxy 2>/dev/null; then
  echo "system_deps: stopping the tinyproxy service the package started" >&2
  systemctl disable --now tinyproxy >/dev/null 2>&1 || true
fi
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
  # Had a cluster been made anyway (an older postgresql-common), it is not left running.
  pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
    if [ "$status" = online ]; then
      echo "system_deps: stopping the PostgreSQL cluster $version/$cluster the package started" >&2
      pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
    fi
  done
fi
echo "system_deps: installed ${missing[*]}" >&2
