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
# swaks --tls needs Net::SSLeay (a Recommends of swaks, so name it).
perl -MNet::SSLeay -e 1 2>/dev/null || need+=(libnet-ssleay-perl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test peers: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Postfix's own system instance is never used by the tests.
  (postfix stop >/dev/null 2>&1 || true)
fi
