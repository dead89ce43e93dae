#!/usr/bin/env bash
# Screenshot a report with headless Chromium (Debian package `chromium`):
#   scripts/screenshot_report.sh reports/hidden_goal/index.html shot.png [WIDTH,HEIGHT]
set -euo pipefail
html=$(realpath "$1"); out=$(realpath -m "${2:-screenshot.png}"); size=${3:-1280,2400}
chrome=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chrome" ] || { echo "error: $chrome not found (apt-get install chromium)" >&2; exit 2; }
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
"$chrome" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" \
  --screenshot="$out" --window-size="$size" "file://$html" 2>/dev/null
[ -s "$out" ] || { echo "error: no screenshot written" >&2; exit 1; }
echo "$out"
