#!/usr/bin/env bash
# A restarted `lmcache serve` finds its disk cache warm: the same long prompt is sent to a fresh instance with an empty
# disk cache (cold prefill), the instance is stopped, a new process is started over the same cache directory, and the
# prompt is sent again (restored from disk: usage.prompt_tokens_details.cached_tokens > 0, same output).
#
#   bash scripts/demo-restart.sh [--model FILE.gguf]
#
# PORT (default 8003), CACHE_DIR (default: a temporary folder, removed at the end). Needs curl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/demo-common.sh
PORT=${PORT:-8003}
MODEL_ARGS=("$@")
logs=$(mktemp -d)
CACHE_DIR=${CACHE_DIR:-$logs/kv}
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

echo "== building"
dotnet build -c Release src/LMCacheSharp.Cli -nologo -v q >/dev/null
LMCACHE=(dotnet src/LMCacheSharp.Cli/bin/Release/net10.0/lmcache.dll)

start() { # NAME
  # local_cpu off: every hit of the restarted process is read from the disk tier.
  "${LMCACHE[@]}" serve --port "$PORT" "${MODEL_ARGS[@]}" --lmcache "local_disk=file://$CACHE_DIR" \
    --lmcache max_local_disk_size=2 --lmcache local_cpu=false >"$logs/$1.log" 2>&1 &
  pid=$!
  demo_wait_for "http://127.0.0.1:$PORT/health" "$logs/$1.log"
}

stop() {
  kill -TERM "$pid" # graceful in ASP.NET Core (SIGINT is ignored by background jobs of a script)
  wait "$pid" 2>/dev/null || true
  pid=""
}

body=$(demo_body)

echo "== first process, empty disk cache at $CACHE_DIR"
start first
demo_ask "first process" "$PORT" "$body" "$logs/first.text"
sleep 1 # the disk tier writes in the background
stop
echo "== second process over the same directory"
start second
demo_ask "second process" "$PORT" "$body" "$logs/second.text"
stop
if cmp -s "$logs/first.text" "$logs/second.text"; then
  echo "== same output after the restart"
else
  echo "== OUTPUTS DIFFER"; exit 1
fi
