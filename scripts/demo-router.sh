#!/usr/bin/env bash
# Two `lmcache serve` instances behind `lmcache router`, once per policy (round-robin, then kv-aware), each time with fresh
# instances: three long documents with three questions each, interleaved (A B C A B C A B C). Prints the prompt tokens
# served from cache per policy and the answering instance of each request (docs/fleet.md, section Router).
#
#   bash scripts/demo-router.sh [--model FILE.gguf]
#
# Ports: PORT1 (8001), PORT2 (8002), ROUTER_PORT (8000). Needs curl and python3. Without --model the built-in default model
# (random weights, generated once into $LMCACHE_HOME/models) is served.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/demo-common.sh
PORT1=${PORT1:-8001}
PORT2=${PORT2:-8002}
ROUTER_PORT=${ROUTER_PORT:-8000}
MODEL_ARGS=("$@")

demo_start

body() { # body DOCUMENT QUESTION
  python3 -c 'import json, sys
doc = " ".join(f"Story {sys.argv[1]} part {i}: Once upon a time there was a little girl named Lily who loved to play in the park with her dog." for i in range(14))
print(json.dumps({"prompt": doc + f" Question {sys.argv[2]} about story {sys.argv[1]}?", "max_tokens": 8, "temperature": 0}))' "$1" "$2"
}

for policy in round-robin kv-aware; do
  pids=()
  for port in "$PORT1" "$PORT2"; do
    "${LMCACHE[@]}" serve --port "$port" "${MODEL_ARGS[@]}" --lmcache chunk_size=64 --log-level warning >"$logs/serve-$port.log" 2>&1 &
    pids+=($!)
    demo_wait_for "http://127.0.0.1:$port/health" "$logs/serve-$port.log"
  done
  "${LMCACHE[@]}" router --port "$ROUTER_PORT" --instances "http://127.0.0.1:$PORT1,http://127.0.0.1:$PORT2" --policy "$policy" \
    --log-level warning >"$logs/router.log" 2>&1 &
  pids+=($!)
  demo_wait_for "http://127.0.0.1:$ROUTER_PORT/health" "$logs/router.log"
  echo "== $policy"
  cached=0 prompt=0
  for q in 1 2 3; do
    for d in A B C; do
      out=$(curl -sf -i -H 'Content-Type: application/json' -d "$(body "$d" "$q")" "http://127.0.0.1:$ROUTER_PORT/v1/completions")
      instance=$(grep -i '^x-lmcache-instance:' <<<"$out" | tr -d '\r' | cut -d' ' -f2)
      read -r p c < <(tail -1 <<<"$out" | python3 -c 'import json, sys; u = json.load(sys.stdin)["usage"]; print(u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"])')
      printf '  story %s question %s -> %s prompt_tokens=%s cached_tokens=%s\n' "$d" "$q" "$instance" "$p" "$c"
      cached=$((cached + c)) prompt=$((prompt + p))
    done
  done
  echo "  $policy: $cached of $prompt prompt tokens from cache"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
done
