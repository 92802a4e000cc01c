#!/usr/bin/env bash
# Installs the Debian packages posrig needs, when missing (idempotent; run as root or via sudo).
#   pcscd vsmartcard-vpcd libpcsclite-dev swig : PC/SC reader emulation (pyscard builds against them)
#   nftables iproute2                          : kernel network faults inside test namespaces
#   python3-venv                               : the project's virtualenv
#   socat                                      : the baseline relay of the proxy benchmark; the
#                                                pdudaemon test's localcmdline PDU switches the virtual PSU with it
#   libsystemd-dev pkgconf gcc                 : pdudaemon (dev extra) depends on systemd-python, built from source
#   chromium                                   : the live page's test (headless; tests/integration/test_service_page.py)
set -euo pipefail
pkgs=(pcscd vsmartcard-vpcd libpcsclite-dev swig nftables iproute2 python3-venv socat chromium
      libsystemd-dev pkgconf gcc)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-system: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
