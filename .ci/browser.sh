#!/usr/bin/env bash
# CI for the doctor's HTML report: makes sure headless Chromium is installed, so that tests/test_report.py can
# load the --report pages in a real browser (under CI=true that test fails when chromium is missing, instead of
# skipping). Called by .ci/run before pytest; runs alone too: `bash .ci/browser.sh`.
#
# Installs Debian's chromium package with apt-get when no chromium is on PATH; a package that does not install
# fails the run (exit 1). Prints the browser's version.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromium > /dev/null && ! command -v chromium-browser > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q chromium; then  # a fresh machine may need the package lists first
    as_root apt-get update -q
    as_root apt-get install -y -q chromium || { echo "browser CI: could not install chromium with apt-get" >&2; exit 1; }
  fi
fi
"$(command -v chromium || command -v chromium-browser)" --version
