#!/usr/bin/env bash
# System packages: the data of taoism's offline data sets and the fonts of the glyphs data set, and the
# build tools of the optional compiled hot path; Debian packages, checked and,
# where this runs as root with apt-get, installed. Elsewhere it prints what to install and
# carries on: code that needs a missing package says so, with the same hint, when it runs.
# `make data` runs this; `make test` and `make demo` run `make data` first.
# Set SYSTEM_DATA_INSTALL=0 to only report.
set -uo pipefail

# One package a line: add a package by adding a line.
PACKAGES=(
  dataset-fashion-mnist   # Fashion-MNIST, /usr/share/datasets/fashion-mnist (security evaluation)
  # fonts for the synthetic glyphs data set (taoism.data.glyphs.FONT_PACKAGES)
  fonts-dejavu-core
  fonts-dejavu-extra
  fonts-liberation
  fonts-liberation2
  fonts-urw-base35
  fonts-freefont-ttf
  fonts-noto-core
  fonts-noto-mono
  fonts-crosextra-carlito
  # not data: the build of the boundary's compiled hot path (setup.py; optional, see docs/boundary.md)
  gcc
  libssl-dev
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "system data: not a Debian system; install the equivalent of: ${PACKAGES[*]}"
  exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system data: ${#PACKAGES[@]} package(s) present: ${PACKAGES[*]}"
  exit 0
fi

if [ "${SYSTEM_DATA_INSTALL:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system data: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
     { apt-get update -q >/dev/null 2>&1 &&
       apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }; then
    echo "system data: installed ${missing[*]}"
    exit 0
  fi
  echo "system data: note: could not install ${missing[*]} (no network or no such package?)"
fi
echo "system data: missing ${missing[*]}; to install: sudo apt-get install ${missing[*]}"
echo "system data: carrying on; what needs them will say so when it runs"
exit 0
