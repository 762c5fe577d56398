#!/usr/bin/env bash
# The whole fleet from one script (docs/fleet.md): a cache server, a controller, three `lmcache serve` instances
# registered with it (sharing the cache server as their remote tier), and `lmcache router --controller --policy kv-aware`
# in front. Three long documents get three questions each, interleaved (A B C A B C A B C), through the router; each line
# shows which instance answered (the router's X-LMCache-Instance header) and how many prompt tokens came from cache.
# Then what the controller knows (instances, chunks per tier, the router's decisions) and its dashboard's URL.
#
#   bash scripts/demo-fleet.sh [--model FILE.gguf]
#
# Without --model: ../shared/models/stories260K.gguf when it is there and its sha256 matches, else the built-in default
# model (random weights, generated once into $LMCACHE_HOME/models). KEEP=1 keeps the fleet running until Ctrl+C (to watch
# the dashboard). Ports: CACHE_PORT (65432), CONTROLLER_PORT (9300), PORT1..PORT3 (8001..8003), ROUTER_PORT (8000).
# THREADS (1): CPU threads per instance (three instances share the machine). Needs curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/demo-common.sh
CACHE_PORT=${CACHE_PORT:-65432}
CONTROLLER_PORT=${CONTROLLER_PORT:-9300}
PORTS=("${PORT1:-8001}" "${PORT2:-8002}" "${PORT3:-8003}")
ROUTER_PORT=${ROUTER_PORT:-8000}
THREADS=${THREADS:-1}
STORIES=../shared/models/stories260K.gguf
STORIES_SHA256=270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d

MODEL_ARGS=("$@")
if [[ ${#MODEL_ARGS[@]} -eq 0 ]]; then
  if [[ -f $STORIES ]] && [[ $(sha256sum "$STORIES" | cut -d' ' -f1) == "$STORIES_SHA256" ]]; then
    # Head size 8: flash attention off (it is 4-5x slower for this model on CPU).
    MODEL_ARGS=(--model "$STORIES" --flash-attention off)
    echo "== model: $STORIES (sha256 checked)"
  else
    echo "== model: the built-in default (no $STORIES with sha256 $STORIES_SHA256)"
  fi
fi

demo_start
CONTROLLER=http://127.0.0.1:$CONTROLLER_PORT

echo "== cache server on lm://127.0.0.1:$CACHE_PORT"
"${LMCACHE[@]}" server --port "$CACHE_PORT" --capacity 1GB >"$logs/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do grep -q "lm://" "$logs/server.log" 2>/dev/null && break; sleep 0.2; done

echo "== controller on $CONTROLLER"
"${LMCACHE[@]}" controller --port "$CONTROLLER_PORT" >"$logs/controller.log" 2>&1 &
pids+=($!)
demo_wait_for "$CONTROLLER/health" "$logs/controller.log"

# One instance after the other, so that only the first generates the default model when it is missing.
for i in 0 1 2; do
  port=${PORTS[$i]}
  echo "== lmcache serve $((i + 1)) on 127.0.0.1:$port, registered with the controller, remote tier lm://127.0.0.1:$CACHE_PORT"
  "${LMCACHE[@]}" serve --port "$port" "${MODEL_ARGS[@]}" --threads "$THREADS" --controller "$CONTROLLER" \
    --lmcache chunk_size=64 --lmcache "remote_url=lm://127.0.0.1:$CACHE_PORT" --log-level warning >"$logs/serve-$port.log" 2>&1 &
  pids+=($!)
  demo_wait_for "http://127.0.0.1:$port/health" "$logs/serve-$port.log"
done

count_instances() { curl -sf "$1" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["instances"]))' 2>/dev/null || echo 0; }
for _ in $(seq 1 100); do [[ $(count_instances "$CONTROLLER/instances") == 3 ]] && break; sleep 0.2; done

echo "== router on 127.0.0.1:$ROUTER_PORT: --controller $CONTROLLER --policy kv-aware"
"${LMCACHE[@]}" router --port "$ROUTER_PORT" --controller "$CONTROLLER" --policy kv-aware --log-level warning >"$logs/router.log" 2>&1 &
pids+=($!)
demo_wait_for "http://127.0.0.1:$ROUTER_PORT/health" "$logs/router.log"
for _ in $(seq 1 100); do [[ $(count_instances "http://127.0.0.1:$ROUTER_PORT/health") == 3 ]] && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$ROUTER_PORT/health" | python3 -c 'import json, sys
for i in json.load(sys.stdin)["instances"]:
    print("  {} controller id {}, healthy {}".format(i["url"], i["controller_id"], i["healthy"]))'

body() { # body DOCUMENT QUESTION
  python3 -c 'import json, sys
doc = " ".join(f"Story {sys.argv[1]} part {i}: Once upon a time there was a little girl named Lily who loved to play in the park with her dog." for i in range(14))
print(json.dumps({"prompt": doc + f" Question {sys.argv[2]} about story {sys.argv[1]}?", "max_tokens": 8, "temperature": 0}))' "$1" "$2"
}

echo "== three documents, three questions each, through the router"
cached=0 prompt=0
declare -A first
for q in 1 2 3; do
  for d in A B C; do
    out=$(curl -sf -i -H 'Content-Type: application/json' -d "$(body "$d" "$q")" "http://127.0.0.1:$ROUTER_PORT/v1/completions")
    instance=$(grep -i '^x-lmcache-instance:' <<<"$out" | tr -d '\r' | cut -d' ' -f2)
    read -r p c < <(tail -1 <<<"$out" | python3 -c 'import json, sys; u = json.load(sys.stdin)["usage"]; print(u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"])')
    note=""
    if [[ -z ${first[$d]:-} ]]; then first[$d]=$instance; note="(new document)"
    elif [[ ${first[$d]} == "$instance" ]]; then note="(where story $d is cached)"
    else note="(moved from ${first[$d]})"; fi
    printf '  story %s question %s -> %s prompt_tokens=%s cached_tokens=%s %s\n' "$d" "$q" "$instance" "$p" "$c" "$note"
    cached=$((cached + c)) prompt=$((prompt + p))
  done
done
echo "  kv-aware through the controller: $cached of $prompt prompt tokens from cache"

echo "== the controller's view"
sleep 2.5 # one heartbeat and one router report
curl -sf "$CONTROLLER/instances" | python3 -c 'import json, sys
for i in json.load(sys.stdin)["instances"]:
    c = i["chunks"]
    print("  {} {}: chunks memory={} disk={} remote={}, hit rate {:.2f}".format(i["id"], i["url"], c["memory"], c["disk"], c["remote"], i["hit_rate"]))'
curl -sf "$CONTROLLER/events?limit=1" | sed -n 's/^data: //p' | python3 -c 'import json, sys
for r in json.load(sys.stdin)["routers"]:
    print("  router {} ({}): {} decisions reported".format(r["router"], r["policy"], r["decisions_total"]))'
curl -sf "http://127.0.0.1:$ROUTER_PORT/metrics" | python3 -c 'import re, sys
counts = {m.group(1): float(m.group(2)) for m in re.finditer(r"lmcache_router_controller_lookups(?:_total)?[{]outcome=.(\w+).[}] ([0-9.e+]+)", sys.stdin.read())}
print("  router lookups at the controller: " + (", ".join("{} {:g}".format(k, v) for k, v in sorted(counts.items())) or "none"))'
# A lookup the controller did not answer in time (the first ones run cold code) went to the instances instead: the log says.
grep -h " warn: " "$logs/router.log" | sed 's/^[^ ]* warn: [^ ]* /  router: /' || true
echo "== dashboard: $CONTROLLER/"
if [[ ${KEEP:-0} == 1 ]]; then
  echo "== KEEP=1: the fleet keeps running; Ctrl+C stops it"
  wait
fi
