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
CACHE_PORT=${CACHE_PORT:-65432}
PORT1=${PORT1:-8001}
PORT2=${PORT2:-8002}
MODEL_ARGS=("$@")

echo "== building"
dotnet build -c Release src/LMCacheSharp.Cli -nologo -v q >/dev/null
LMCACHE=(dotnet src/LMCacheSharp.Cli/bin/Release/net10.0/lmcache.dll)

logs=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

wait_for() { # URL NAME
  for _ in $(seq 1 1200); do
    if curl -sf "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "$2 did not come up; its log:"; cat "$logs/$2.log"; exit 1
}

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
  wait_for "http://127.0.0.1:$port/health" "$name"
done

# A long document (about 2,000 tokens) and a question.
doc=""
for i in $(seq 1 40); do
  doc+="Section $i. A KV cache stores the keys and values that attention computed for every token of a prompt, so that a later request sharing the prefix can skip recomputing them. "
done
body="{\"prompt\": \"${doc}Question: what does a KV cache store? Answer:\", \"max_tokens\": 16, \"temperature\": 0}"

ask() { # NAME PORT
  local out
  out=$(curl -sf -w '\n%{time_total}' -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$2/v1/completions")
  local json=${out%$'\n'*} seconds=${out##*$'\n'}
  local prompt cached text
  prompt=$(grep -o '"prompt_tokens":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)
  cached=$(grep -o '"cached_tokens":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)
  text=$(grep -o '"text":"[^"]*"' <<<"$json" | head -1 | cut -d: -f2-)
  printf '%-13s prompt_tokens=%-5s cached_tokens=%-5s time=%6.3fs text=%s\n' "$1" "$prompt" "$cached" "$seconds" "$text"
  echo "$text" >"$logs/$1.text"
}

echo "== the same request to instance one, then to instance two"
ask "instance one" "$PORT1"
sleep 1 # the remote tier writes in the background
ask "instance two" "$PORT2"
if cmp -s "$logs/instance one.text" "$logs/instance two.text"; then
  echo "== same output on both instances"
else
  echo "== OUTPUTS DIFFER"; exit 1
fi
