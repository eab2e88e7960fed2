#!/usr/bin/env bash
# The main job on a fresh machine: set up the tools, build the page with the shipped model
# (or MODEL_DIR) and serve it on http://localhost:${PORT:-8080}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-web.sh
bash scripts/build-web.sh "${MODEL_DIR:-weights}" dist
port=${PORT:-8080}
echo "serving dist/ on http://localhost:$port"
exec python3 -m http.server "$port" --bind 127.0.0.1 --directory dist
