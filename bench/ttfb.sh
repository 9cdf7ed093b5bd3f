#!/usr/bin/env bash
# Time to first byte of a fresh process, zmirror beside nginx proxy_cache, over HTTPS.
# Reuses the state of a previous `BENCH_TLS=1 bash bench/peers.sh` run (the shared harness keeps
# its TLS upstream's data, certificate and nginx.conf under $BENCH_STATE, default /tmp/zmirror-bench).
# Each round starts the upstream once, then for zmirror and for nginx in turn: an empty cache,
# a fresh process, 1 s of idle, and one curl of the manifest by tag (relayed) then of its largest
# blob (cold: fetched from the upstream), the order of a pull (ORDER=blob: the blob first).
# Prints time_starttransfer in ms per round and the medians.
#   bash bench/ttfb.sh [ROUNDS]      (default 7)
set -euo pipefail
rounds=${1:-7}
here=$(cd "$(dirname "$0")" && pwd)
state=${BENCH_STATE:-/tmp/zmirror-bench}; conf=$state/conf
[ -f "$conf/upstream.yml" ] && [ -f "$conf/nginx.conf" ] || {
  echo "no $conf/upstream.yml or nginx.conf: run BENCH_TLS=1 bash bench/peers.sh first" >&2; exit 2; }
grep -q 'proxy_pass https' "$conf/nginx.conf" || { echo "$conf is not from a BENCH_TLS=1 run" >&2; exit 2; }
up_port=$(sed -n 's/.*addr: *[^:]*:\([0-9]*\).*/\1/p' "$conf/upstream.yml" | head -1)
ng_port=$(sed -n 's/.*listen 127.0.0.1:\([0-9]*\);.*/\1/p' "$conf/nginx.conf" | head -1)
zm_port=$((ng_port + 1))
export SSL_CERT_FILE=$conf/upstream-cert.pem CURL_CA_BUNDLE=$conf/upstream-cert.pem
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
docker-registry serve "$conf/upstream.yml" > "$work/upstream.log" 2>&1 & pids+=($!)
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 2; }
wait_up "https://127.0.0.1:$up_port/v2/"
repo=bench/big
mt='application/vnd.docker.distribution.manifest.v2+json'
digest=$(curl -s -H "Accept: $mt" "https://127.0.0.1:$up_port/v2/$repo/manifests/latest" \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print(max(m["layers"], key=lambda l: l["size"])["digest"])')
ms() { python3 -c "print(round(1000*$1, 1))"; }
blob() { curl -s -o /dev/null -w '%{time_starttransfer}' "$1/v2/$repo/blobs/$digest"; }
manifest() { curl -s -o /dev/null -w '%{time_starttransfer}' -H "Accept: $mt" "$1/v2/$repo/manifests/latest"; }
first_bytes() {  # $1 base URL -> "blob_ms manifest_ms"
  local b m
  if [ "${ORDER:-manifest}" = blob ]; then b=$(blob "$1"); m=$(manifest "$1")
  else m=$(manifest "$1"); b=$(blob "$1"); fi
  echo "$(ms "$b") $(ms "$m")"
}
: > "$work/results"
for r in $(seq "$rounds"); do
  # zmirror: fresh process, empty cache
  rm -rf "$work/zm"; mkdir -p "$work/zm"
  BENCH_UPSTREAM=https://127.0.0.1:$up_port BENCH_PORT=$zm_port BENCH_CACHE_DIR=$work/zm \
    setsid bash "$here/zmirror-candidate.sh" > "$work/zm.log" 2>&1 & zp=$!; pids+=($zp)
  wait_up "http://127.0.0.1:$zm_port/v2/"; sleep 1
  z=$(first_bytes "http://127.0.0.1:$zm_port"); kill "$zp"; wait "$zp" 2>/dev/null || true
  # nginx: fresh process, empty cache
  rm -rf "$state/data/nginx-cache"; mkdir -p "$state/data/nginx-tmp" "$state/run" "$state/logs"
  nginx -e "$state/logs/nginx-error.log" -c "$conf/nginx.conf" -g 'daemon off;' > "$work/nginx.log" 2>&1 & np=$!; pids+=($np)
  wait_up "http://127.0.0.1:$ng_port/v2/"; sleep 1
  n=$(first_bytes "http://127.0.0.1:$ng_port"); kill "$np"; wait "$np" 2>/dev/null || true
  echo "round $r  zmirror blob/manifest $z ms   nginx $n ms"
  echo "$z $n" >> "$work/results"
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
zb, zm, nb, nm = (statistics.median(c) for c in zip(*rows))
ratio = statistics.median(r[0] / r[2] for r in rows)
print(f"median first byte: blob zmirror {zb} ms, nginx {nb} ms (zmirror/nginx per round, median {ratio:.2f}); "
      f"manifest zmirror {zm} ms, nginx {nm} ms")
PY
