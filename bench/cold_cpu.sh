#!/usr/bin/env bash
# Where the CPU of a cold 256 MiB pull goes: zmirror vs the Go registry's proxy mode and nginx
# proxy_cache, same upstream. For each round and target: start the proxy on an empty cache, GET the
# big blob once with curl, then report MB/s, the time to the first byte, the CPU seconds used by the
# proxy (its whole process tree, sampled 0.3 s after the transfer so work that finishes it is
# counted), by the upstream registry and by curl, and how busy both cores were.
#   bench/cold_cpu.sh [ROUNDS]          (needs one bench/peers.sh run first: upstream data + configs)
#   TARGETS="go zmirror" bench/cold_cpu.sh 3      (default: go nginx zmirror, in that order each round)
#   TARGETS="zmirror zmirror=/path/to/other/checkout" bench/cold_cpu.sh   (that checkout first on PYTHONPATH)
set -euo pipefail
rounds=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
state=${BENCH_STATE:-${TMPDIR:-/tmp}/zmirror-bench}
conf=$state/conf
[ -f "$conf/upstream.yml" ] || { echo "run bench/peers.sh once first (no $conf/upstream.yml)" >&2; exit 2; }
work=$(mktemp -d)
B=http://127.0.0.1
UP=${BENCH_UPSTREAM_PORT:-16000} GO=${BENCH_DISTRIBUTION_PORT:-16001} NG=${BENCH_NGINX_PORT:-16002}
ZM=${BENCH_CANDIDATE_PORT:-16003}
D=sha256:4657b809ad212187a9c66b66e4735f7f68deb6fb4e274455d88f83d8820fbce8
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
cputree() {  # utime+stime of $1 and its children (nginx: master + workers)
  local t=0 p
  for p in $1 $(pgrep -P "$1" || true); do t=$((t + $(cpu "$p" 2>/dev/null || echo 0))); done
  echo $t
}

docker-registry serve "$conf/upstream.yml" > "$work/upstream.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null $B:$UP/v2/ && break; sleep 0.1; done

one() {  # $1 = zmirror[=CHECKOUT] | go | nginx
  rm -rf "$work/cache" "$state/data/distribution" "$state/data/nginx-cache"; mkdir -p "$work/cache"; sync
  if [ "$1" = go ]; then
    docker-registry serve "$conf/distribution-proxy.yml" > "$work/go.log" 2>&1 & pid=$!; port=$GO
  elif [ "$1" = nginx ]; then
    mkdir -p "$state/logs" "$state/run"
    nginx -e "$work/nginx-error.log" -c "$conf/nginx.conf" -g "daemon off;" > "$work/nginx.log" 2>&1 & pid=$!; port=$NG
  else
    local pp=${PYTHONPATH:-}
    case $1 in zmirror=*) pp=${1#zmirror=};; esac
    PYTHONPATH=$pp BENCH_UPSTREAM=$B:$UP BENCH_PORT=$ZM BENCH_CACHE_DIR=$work/cache \
      setsid "$here/zmirror-candidate.sh" > "$work/zmirror.log" 2>&1 & pid=$!; port=$ZM
  fi
  for _ in $(seq 100); do curl -s -o /dev/null $B:$port/v2/ && break; sleep 0.1; done
  sleep 0.3
  local p1 u1 p2 u2 s
  p1=$(cputree $pid); u1=$(cpu $up)
  read -r _ a1 b1 c1 d1 e1 f1 g1 _ < /proc/stat
  s=$(/usr/bin/time -f "%U %S" -o "$work/curltime" curl -s -o /dev/null -w '%{speed_download} %{time_starttransfer}' \
      $B:$port/v2/bench/big/blobs/$D)
  read -r _ a2 b2 c2 d2 e2 f2 g2 _ < /proc/stat
  sleep 0.3
  p2=$(cputree $pid); u2=$(cpu $up)
  local tot=$(( (a2+b2+c2+d2+e2+f2+g2)-(a1+b1+c1+d1+e1+f1+g1) )) idle=$(( d2-d1 ))
  python3 - "$1" $s $((p2-p1)) $((u2-u1)) "$ticks" "$(cat "$work/curltime")" $tot $idle <<'PY'
import sys
name, speed, ttfb, p, u, hz, curl, tot, idle = sys.argv[1:10]
hz = int(hz)
cu = sum(float(x) for x in curl.split())
busy = 100 * (int(tot) - int(idle)) / max(int(tot), 1)
print(f"{name:8} {float(speed) / 1e6:6.0f} MB/s  first byte {1000 * float(ttfb):4.1f} ms  proxy {int(p) / hz:.2f} s  upstream {int(u) / hz:.2f} s"
      f"  curl {cu:.2f} s CPU   both cores {busy:.0f}% busy")
PY
  kill $pid; wait $pid 2>/dev/null || true
}

for r in $(seq "$rounds"); do
  for t in ${TARGETS:-go nginx zmirror}; do one "$t"; done
done
