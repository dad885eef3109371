#!/usr/bin/env bash
# Install what edgeforge's `web` runtime runs models with: a headless browser (Debian's
# chromium) and a pinned onnxruntime-web from npm, in a cache folder outside the repository.
#
#   EDGEFORGE_WEB_DIR  where onnxruntime-web goes (default: ~/.cache/edgeforge/web)
#
# Idempotent: a second run finds both and returns at once. Without root (for apt-get) or npm
# it says what is missing and exits 0: the web runtime then reports itself unable to run and
# its tests skip, as on any machine without a browser.
set -euo pipefail

# Keep equal to ORT_WEB_VERSION in src/edgeforge/runtimes/_browser.py.
ORT_WEB_VERSION=1.30.0
WEB_DIR="${EDGEFORGE_WEB_DIR:-$HOME/.cache/edgeforge/web}"
PACKAGE="$WEB_DIR/node_modules/onnxruntime-web"

say() { echo "install-web-deps: $*" >&2; }

if command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ]; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium"
    apt-get update -qq && apt-get install -y -qq chromium
else
    say "chromium is missing: install it with 'sudo apt-get install chromium' (Debian)"
fi

installed=""
if [ -f "$PACKAGE/package.json" ] && [ -f "$PACKAGE/dist/ort.wasm.min.js" ]; then
    installed=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$PACKAGE/package.json" | head -n 1)
fi
if [ "$installed" = "$ORT_WEB_VERSION" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    say "npm is missing: install Node.js 20 and npm, then run $0 again"
    exit 0
fi
say "installing onnxruntime-web@$ORT_WEB_VERSION into $WEB_DIR"
mkdir -p "$WEB_DIR"
# --ignore-scripts: the browser files are plain dist files; no package needs to run code here.
npm install --prefix "$WEB_DIR" --save-exact --ignore-scripts --no-audit --no-fund \
    --loglevel=error "onnxruntime-web@$ORT_WEB_VERSION"
[ -f "$PACKAGE/dist/ort.wasm.min.js" ] || { say "npm installed no $PACKAGE/dist/ort.wasm.min.js"; exit 1; }
