# Shared by the demo scripts (sourced): the long prompt they send and the request that prints what came back.

# The request body: a long document (about 3,500 tokens with the default model) and a question, greedy, 16 tokens.
demo_body() {
  local doc="" i
  for i in $(seq 1 40); do
    doc+="Section $i. A KV cache stores the keys and values that attention computed for every token of a prompt, so that a later request sharing the prefix can skip recomputing them. "
  done
  printf '{"prompt": "%sQuestion: what does a KV cache store? Answer:", "max_tokens": 16, "temperature": 0}' "$doc"
}

# demo_ask LABEL PORT BODY TEXT_FILE: sends BODY to /v1/completions, prints prompt and cached tokens, time and text, and
# writes the text to TEXT_FILE.
demo_ask() {
  local out json seconds prompt cached text
  out=$(curl -sf -w '\n%{time_total}' -H 'Content-Type: application/json' -d "$3" "http://127.0.0.1:$2/v1/completions")
  json=${out%$'\n'*}
  seconds=${out##*$'\n'}
  prompt=$(grep -o '"prompt_tokens":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)
  cached=$(grep -o '"cached_tokens":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)
  text=$(grep -o '"text":"[^"]*"' <<<"$json" | head -1 | cut -d: -f2-)
  printf '%-16s prompt_tokens=%-5s cached_tokens=%-5s time=%6.3fs text=%s\n' "$1" "$prompt" "$cached" "$seconds" "$text"
  echo "$text" >"$4"
}

# demo_wait_for URL LOG: waits up to 10 minutes for URL to answer (a first start may generate the default model).
demo_wait_for() {
  local _
  for _ in $(seq 1 1200); do
    if curl -sf "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "$1 did not come up; the log:"; cat "$2"; exit 1
}

# demo_start: builds the CLI, sets LMCACHE (the command), logs (a temporary folder) and pids (started processes, which
# the EXIT trap stops before it removes the logs).
demo_start() {
  echo "== building"
  dotnet build -c Release src/LMCacheSharp.Cli -nologo -v q >/dev/null
  LMCACHE=(dotnet src/LMCacheSharp.Cli/bin/Release/net10.0/lmcache.dll)
  logs=$(mktemp -d)
  pids=()
  trap demo_cleanup EXIT
}

demo_cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$logs"
}
