#!/usr/bin/env bash
# zmirror side by side with the Go registry's proxy mode and nginx proxy_cache on the same
# upstream, using the shared peer benchmark (../shared/bench next to the checkout, or $PEER_BENCH).
#   bench/peers.sh > result.md            full run (~10 min)
#   QUICK=1 bench/peers.sh                smoke run
#   ONLY=cold,coalesce bench/peers.sh     some sections
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peer=${PEER_BENCH:-$here/../../shared/bench}
[ -x "$peer/bench.sh" ] || { echo "peer benchmark not found at $peer (set PEER_BENCH)" >&2; exit 2; }
"$peer/install.sh" >&2
export CANDIDATE_START="exec $here/zmirror-candidate.sh"
export CANDIDATE_NAME=${CANDIDATE_NAME:-zmirror}
exec "$peer/bench.sh" "$@"
