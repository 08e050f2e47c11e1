#!/usr/bin/env bash
# Render a `tunelab compare` report in headless Chromium (Debian package `chromium`) and save a PNG:
#   examples/screenshot_report.sh runs/cmp/report.html report.png
set -euo pipefail
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1500,1900 --screenshot="$(realpath -m "$2")" "file://$(realpath "$1")"
rm -rf "$profile"
