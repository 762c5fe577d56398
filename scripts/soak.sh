#!/usr/bin/env bash
# Soak test of a cache server with a disk tier shared by two lmcache serve instances (see scripts/soak.py for the pass
# criteria). Builds the CLI, then runs the soak; exits non-zero when it fails.
#
#   bash scripts/soak.sh                                   # 2 clients, 1 minute, no chaos
#   nice -n 19 bash scripts/soak.sh --minutes 5 --chaos-every 60 --corrupt 3
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet build -c Release src/LMCacheSharp.Cli -nologo -v q >/dev/null
exec python3 scripts/soak.py "$@"
