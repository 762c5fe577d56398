#!/usr/bin/env bash
# Long fuzzing runs with afl++ and SharpFuzz: scripts/fuzz.sh TARGET MINUTES
#   TARGET: frames (FrameReader and request bodies), envelope (ChunkEnvelope), openai (OpenAiRequestParser).
# Installs afl++ (apt) and the SharpFuzz command-line tool when missing, publishes fuzz/LMCacheSharp.Fuzz, instruments
# the LMCacheSharp assemblies with sharpfuzz, seeds afl with the target's valid inputs and its corpus folder, runs
# afl-fuzz (under nice) for MINUTES (fractions allowed) and copies every crash, as hex, into the corpus folder, where
# the CI tests replay it. Work files go to artifacts/fuzz/TARGET; a later run resumes its findings/ (AFL_AUTORESUME).
# FUZZ_NICE (default 19) sets the niceness.
set -euo pipefail

target="${1:-}"
minutes="${2:-}"
case "$target" in
  frames | envelope) corpus=tests/LMCacheSharp.Server.Tests/FuzzCorpus ;;
  openai) corpus=tests/LMCacheSharp.Serving.Tests/FuzzCorpus/OpenAi ;;
  *) echo "usage: scripts/fuzz.sh {frames|envelope|openai} MINUTES" >&2; exit 2 ;;
esac
if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "usage: scripts/fuzz.sh $target MINUTES (a number, e.g. 2.5)" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
root=$PWD
work="$root/artifacts/fuzz/$target"
nice_level="${FUZZ_NICE:-19}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v afl-fuzz > /dev/null; then
  echo "== installing afl++"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq afl++
fi
export PATH="$PATH:$HOME/.dotnet/tools"
if ! command -v sharpfuzz > /dev/null; then
  echo "== installing the SharpFuzz tool"
  dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0
fi

echo "== publishing and instrumenting"
rm -rf "$work/bin" "$work/plain" "$work/in"
nice -n "$nice_level" dotnet publish fuzz/LMCacheSharp.Fuzz -c Release -o "$work/plain" --nologo -v quiet
# Instrumented assemblies only run under afl (their trace map is afl's shared memory): seeds and crash replays use
# the plain copy.
cp -r "$work/plain" "$work/bin"
for assembly in LMCacheSharp.Protocol LMCacheSharp.Core LMCacheSharp.Serving; do
  sharpfuzz "$work/bin/$assembly.dll"
done
fuzz=(dotnet "$work/bin/LMCacheSharp.Fuzz.dll" "$target")
plain=(dotnet "$work/plain/LMCacheSharp.Fuzz.dll" "$target")

# Seeds: the target's valid inputs, then every corpus file (hex decoded), each as one raw input.
"${plain[@]}" --seeds "$work/in" > /dev/null
for file in "$corpus"/*.hex "$corpus"/*.json; do
  [ -e "$file" ] || continue
  name=$(basename "$file")
  case "$file" in
    *.hex) tr -d ' \n\r' < "$file" | xxd -r -p > "$work/in/corpus-${name%.hex}" ;;
    *) cp "$file" "$work/in/corpus-${name%.json}" ;;
  esac
done
# afl refuses inputs over 1 MiB; the envelope target also reads the frame corpus, which is fine.
find "$work/in" -size +1M -delete

dict=()
[ "$target" = openai ] && dict=(-x fuzz/LMCacheSharp.Fuzz/openai.dict)
seconds=$(awk -v m="$minutes" 'BEGIN { s = int(m * 60); print (s < 1 ? 1 : s) }')
echo "== afl-fuzz $target for ${seconds}s (nice $nice_level)"
AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_AUTORESUME=1 nice -n "$nice_level" afl-fuzz -i "$work/in" -o "$work/findings" -t 5000 -m none -V "$seconds" "${dict[@]}" \
  -- "${fuzz[@]}" > "$work/afl.log" 2>&1 || { tail -30 "$work/afl.log"; exit 1; }

stats="$work/findings/default/fuzzer_stats"
stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
echo "== $target: $(stat execs_done) executions ($(stat execs_per_sec)/s), corpus $(stat corpus_count), crashes $(stat saved_crashes), hangs $(stat saved_hangs)"

found=0
for crash in "$work"/findings/default/crashes/id:*; do
  [ -e "$crash" ] || continue
  hex=$(od -An -tx1 -v "$crash" | tr -d ' \n' | tr a-f A-F)
  out="$corpus/afl-$target-$(printf '%s' "$hex" | sha256sum | cut -c1-12).hex"
  printf '%s\n' "$hex" > "$out"
  echo "crash: $crash -> $out"
  "${plain[@]}" "$crash" || true
  found=$((found + 1))
done
[ "$found" -eq 0 ] && echo "no crashes"
exit 0
