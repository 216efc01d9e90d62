#!/usr/bin/env bash
# Installs the real peers the test suite talks to (Debian packages).
# Skips apt entirely when everything is already present, so repeated runs stay fast.
set -euo pipefail
need=()
command -v swaks >/dev/null || need+=(swaks)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need+=(python3-aiosmtpd)
/usr/bin/python3 -c 'import dkim' 2>/dev/null || need+=(python3-dkim)
# prometheus_client's text-format parser checks the /metrics output.
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
# dkimpy verifies ed25519-sha256 signatures with PyNaCl (a Recommends, so name it).
/usr/bin/python3 -c 'import nacl' 2>/dev/null || need+=(python3-nacl)
command -v openssl >/dev/null || need+=(openssl)
# curl checks the admin API over HTTPS as an independent client.
command -v curl >/dev/null || need+=(curl ca-certificates)
# faketime runs the suite under shifted clocks (scripts/test-clocks.sh); locales gives the
# Japanese and German locales those runs use.
command -v faketime >/dev/null || need+=(faketime)
command -v locale-gen >/dev/null || need+=(locales)
# swaks --tls needs Net::SSLeay (a Recommends of swaks, so name it).
perl -MNet::SSLeay -e 1 2>/dev/null || need+=(libnet-ssleay-perl)
# libpq (headers + pkg-config file) for the CPostgreSQL module, and a PostgreSQL server whose
# binaries (/usr/lib/postgresql/*/bin) scripts/pg-test-server.sh runs as a private instance.
pkg-config --exists libpq 2>/dev/null || need+=(libpq-dev)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The dashboard's browser tests (scripts/browser-tests.sh): a real headless Chromium driven
# by Selenium from Debian's interpreter.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
/usr/bin/python3 -c 'import selenium' 2>/dev/null || need+=(python3-selenium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test peers: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Postfix's own system instance is never used by the tests.
  (postfix stop >/dev/null 2>&1 || true)
  # Nor is PostgreSQL's system cluster (Debian creates and may start "main"): the tests run a
  # private server (scripts/pg-test-server.sh).
  (service postgresql stop >/dev/null 2>&1 || true)
fi

# The locales the clock/locale runs use (scripts/test-clocks.sh).
if ! locale -a 2>/dev/null | grep -qi '^ja_JP.utf8$' || ! locale -a 2>/dev/null | grep -qi '^de_DE.utf8$'; then
  sed -i -E 's/^# *(ja_JP.UTF-8 UTF-8|de_DE.UTF-8 UTF-8)/\1/' /etc/locale.gen
  grep -q '^ja_JP.UTF-8 UTF-8' /etc/locale.gen || echo 'ja_JP.UTF-8 UTF-8' >> /etc/locale.gen
  grep -q '^de_DE.UTF-8 UTF-8' /etc/locale.gen || echo 'de_DE.UTF-8 UTF-8' >> /etc/locale.gen
  locale-gen >/dev/null
fi
