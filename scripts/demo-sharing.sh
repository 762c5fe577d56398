#!/usr/bin/env bash
# Two `lmcache serve` instances share one `lmcache server`: a long prompt answered by instance 1 is a cache hit on
# instance 2 (usage.prompt_tokens_details.cached_tokens > 0, lower time to answer), with the same greedy output.
#
#   bash scripts/demo-sharing.sh [--model FILE.gguf]
#
# Ports: CACHE_PORT (default 65432), PORT1 (8001), PORT2 (8002). Needs curl. Without --model the built-in default model
# (random weights, generated once into $LMCACHE_HOME/models) is served.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/demo-common.sh
CACHE_PORT=${CACHE_PORT:-65432}
PORT1=${PORT1:-8001}
PORT2=${PORT2:-8002}
MODEL_ARGS=("$@")

demo_start

echo "== cache server on 127.0.0.1:$CACHE_PORT"
"${LMCACHE[@]}" server --port "$CACHE_PORT" --capacity 2GB >"$logs/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do grep -q "listening\|lm://" "$logs/server.log" 2>/dev/null && break; sleep 0.2; done

# One instance after the other, so that only the first generates the default model when it is missing.
for name in one two; do
  port=$([ "$name" = one ] && echo "$PORT1" || echo "$PORT2")
  echo "== lmcache serve '$name' on 127.0.0.1:$port, remote_url=lm://127.0.0.1:$CACHE_PORT"
  "${LMCACHE[@]}" serve --port "$port" "${MODEL_ARGS[@]}" --lmcache "remote_url=lm://127.0.0.1:$CACHE_PORT" \
    >"$logs/$name.log" 2>&1 &
  pids+=($!)
  demo_wait_for "http://127.0.0.1:$port/health" "$logs/$name.log"
done

body=$(demo_body)

echo "== the same request to instance one, then to instance two"
demo_ask "instance one" "$PORT1" "$body" "$logs/one.text"
sleep 1 # the remote tier writes in the background
demo_ask "instance two" "$PORT2" "$body" "$logs/two.text"
if cmp -s "$logs/one.text" "$logs/two.text"; then
  echo "== same output on both instances"
else
  echo "== OUTPUTS DIFFER"; exit 1
fi
