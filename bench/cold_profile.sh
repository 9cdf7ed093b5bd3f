#!/usr/bin/env bash
# Profiles zmirror during cold 256 MiB pulls (the setup of bench/cold_cpu.sh): starts zmirror on an
# empty cache, attaches py-spy (native frames, all threads, idle included) and, when it works,
# `perf record -e cpu-clock -g`, GETs the big blob once with curl, and writes the profiles to OUT.
#   bench/cold_profile.sh [OUT_DIR] [ROUNDS]    (needs one bench/peers.sh run first)
# PROFILE=perf|pyspy|both (default perf: py-spy's sampling stops the process and slows the pull
# several-fold, so its percentages describe a slowed run); PYSPY_RATE (default 200 Hz); py-spy runs
# --nonblocking (Python frames only) unless PYSPY_NATIVE=1 (--native, which has to stop the process).
# WARM=1 GETs the small blob first (the pull then runs without the first-request costs).
# Reading them:  perf report -i OUT/perf.1.data --no-children --sort dso,sym --stdio
#                py-spy's raw output: one "frame;frame;... count" line per stack
set -euo pipefail
out=${1:-${TMPDIR:-/tmp}/zmirror-cold-profile}; rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
state=${BENCH_STATE:-${TMPDIR:-/tmp}/zmirror-bench}
conf=$state/conf
venv=${ZMIRROR_VENV:-$here/../.venv}
pyspy=${PYSPY:-$venv/bin/py-spy}
[ -f "$conf/upstream.yml" ] || { echo "run bench/peers.sh once first (no $conf/upstream.yml)" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d)
B=http://127.0.0.1
UP=${BENCH_UPSTREAM_PORT:-16000} ZM=${BENCH_CANDIDATE_PORT:-16003}
D=sha256:4657b809ad212187a9c66b66e4735f7f68deb6fb4e274455d88f83d8820fbce8
docker-registry serve "$conf/upstream.yml" > "$work/upstream.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null $B:$UP/v2/ && break; sleep 0.1; done
for r in $(seq "$rounds"); do
  rm -rf "$work/cache"; mkdir -p "$work/cache"; sync
  BENCH_UPSTREAM=$B:$UP BENCH_PORT=$ZM BENCH_CACHE_DIR=$work/cache \
    setsid "$here/zmirror-candidate.sh" > "$work/zmirror.log" 2>&1 & pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null $B:$ZM/v2/ && break; sleep 0.1; done
  # the candidate script execs twistd: $pid is the server
  spy= perf=
  case ${PROFILE:-perf} in pyspy|both)
    "$pyspy" record --threads --idle ${PYSPY_NATIVE:+--native} ${PYSPY_NATIVE:---nonblocking} -r "${PYSPY_RATE:-200}" -f "${PYSPY_FORMAT:-raw}" \
      -o "$out/pyspy.$r.txt" -p $pid > "$out/pyspy.$r.log" 2>&1 & spy=$! ;; esac
  case ${PROFILE:-perf} in strace)  # system call counts per thread (slows the pull)
    strace -c -f -S calls -o "$out/strace.$r.txt" -p $pid 2> "$out/strace.$r.log" & spy=$! ;; esac
  case ${PROFILE:-perf} in timeline)  # every system call with a time stamp (slows the pull)
    strace -f -tt -T -o "$out/timeline.$r.txt" -p $pid 2> "$out/timeline.$r.log" & spy=$! ;; esac
  case ${PROFILE:-perf} in stat)  # context switches, migrations, futex/splice/sendfile calls, per thread
    perf stat --per-thread -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_futex,syscalls:sys_enter_splice,syscalls:sys_enter_sendfile64,syscalls:sys_enter_epoll_wait \
      -o "$out/stat.$r.txt" -p $pid > "$out/stat.$r.log" 2>&1 & perf=$! ;; esac
  case ${PROFILE:-perf} in system)  # every process on the machine (upstream, curl, kernel threads too)
    perf record -a -e cpu-clock -F 2000 -g -o "$out/perf.$r.data" > "$out/perf.$r.log" 2>&1 & perf=$! ;; esac
  case ${PROFILE:-perf} in perf|both)
    perf record -e cpu-clock -F 4000 -g -o "$out/perf.$r.data" -p $pid > "$out/perf.$r.log" 2>&1 & perf=$! ;; esac
  # WARM=1: one small-blob GET first, so first-request costs (imports, pools) are not in the pull
  [ -n "${WARM:-}" ] && curl -s -o /dev/null -w "warm-up small blob: first byte after %{time_starttransfer} s\n" \
    $B:$ZM/v2/bench/small/blobs/$(cat "$state/blobs/small.layer.digest")
  sleep 1
  curl -s -o /dev/null -w "round $r: %{speed_download} B/s, first byte after %{time_starttransfer} s, total %{time_total} s\n" $B:$ZM/v2/bench/big/blobs/$D
  sleep 0.3
  for p in $spy $perf; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  kill $pid; wait $pid 2>/dev/null || true; cp "$work/zmirror.log" "$out/zmirror.$r.log"
done
echo "profiles in $out" >&2
