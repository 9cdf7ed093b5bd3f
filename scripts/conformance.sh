#!/usr/bin/env bash
# scripts/conformance.sh — the OCI distribution-spec conformance suite (Pull workflow) against zmirror.
#
# Everything on 127.0.0.1, in one temp dir, torn down on exit:
#   1. builds the suite (../shared/conformance/build.sh; cached after the first run),
#   2. starts Debian's docker-registry (writable, free port) and seeds it with the suite's content,
#   3. starts `twistd -n zmirror` on a fresh data dir whose registries table lists only that upstream
#      (setup with scripts/conformance_data.py and the `zmirror` CLI, never the admin API),
#   4. runs the suite twice through zmirror, read-only:
#        anonymous — the namespace whitelisted, no credentials;
#        user      — the whitelist entry disabled, a registry user (`zmirror user add`) logs in.
# Prints each run's report and, last, one line per mode: "conformance MODE: N passed, N failed"
# (or "conformance MODE: not run (…)"). Exit 0 only when both modes ran and no spec failed.
#
# env: CONFORMANCE_DIR   the suite's scripts (default ../shared/conformance next to the checkout)
#      ZMIRROR_BIN       dir holding python, twistd and zmirror (default .venv/bin, else from PATH)
#      CONFORMANCE_NS    namespace to test (default conformance/repo)
#      CONFORMANCE_KEEP  1: keep the temp dir (logs, data) and say where
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CONF=${CONFORMANCE_DIR:-$REPO/../shared/conformance}
NS=${CONFORMANCE_NS:-conformance/repo}
MODES="anonymous user"
declare -A RESULT=([anonymous]="not run" [user]="not run")
PIDS=()
WORK=""
START=$SECONDS

say() { echo "conformance: $*"; }

summary() {
  echo "== conformance summary (distribution-spec v1.1.1, Pull, ${NS}) =="
  for m in $MODES; do echo "conformance $m: ${RESULT[$m]}"; done
  echo "conformance: $((SECONDS - START)) s"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$WORK" ]; then
    if [ "${CONFORMANCE_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  summary
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { say "$*"; exit 1; }

log_tail() {  # NAME FILE
  echo "--- last lines of $1 ---"; tail -n 30 "$2" 2>/dev/null; echo "---"
}

# -- tools
[ -x "$CONF/run-pull.sh" ] || fail "no conformance suite at $CONF (set CONFORMANCE_DIR)"
CONF=$(cd "$CONF" && pwd)
if [ -n "${ZMIRROR_BIN:-}" ]; then BIN=$ZMIRROR_BIN
elif [ -x "$REPO/.venv/bin/twistd" ]; then BIN=$REPO/.venv/bin
else BIN=$(dirname "$(command -v twistd 2>/dev/null || echo /nonexistent/twistd)"); fi
PY=$BIN/python TWISTD=$BIN/twistd ZM=$BIN/zmirror
for t in "$PY" "$TWISTD" "$ZM"; do [ -x "$t" ] || fail "$t not found (make deps, or set ZMIRROR_BIN)"; done
command -v docker-registry >/dev/null || fail "docker-registry not installed (make system-deps)"
command -v curl >/dev/null || fail "curl not installed (make system-deps)"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}   # this checkout's zmirror first
PDEATH=(); command -v setpriv >/dev/null && PDEATH=(setpriv --pdeathsig TERM)

say "building the suite"
timeout --kill-after=10 900 "$CONF/build.sh" >/dev/null || fail "the suite did not build"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/zmirror-conformance.XXXXXX") || fail "mktemp failed"
mkdir -p "$WORK/logs"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

spawn() {  # LOGFILE CMD...  (starts CMD in the background, records its pid in PIDS and $SPAWNED)
  local log=$1; shift
  "${PDEATH[@]}" "$@" </dev/null >"$log" 2>&1 &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}

wait_http() {  # URL PID SECONDS  (any HTTP answer counts)
  local url=$1 pid=$2 deadline=$((SECONDS + $3)) code
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")
    [ "$code" != 000 ] && return 0
    sleep 0.2
  done
  return 1
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@"; }

# -- the upstream: Debian's docker-registry (distribution 2.8), writable
UP_PORT=$(free_port)
mkdir -p "$WORK/upstream"
cat >"$WORK/upstream.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: "$WORK/upstream"
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$UP_PORT
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
EOF
UPSTREAM=http://127.0.0.1:$UP_PORT
# distribution reads REGISTRY_* environment variables as configuration overrides
unset_registry=(); for v in $(compgen -e | grep '^REGISTRY_'); do unset_registry+=(-u "$v"); done
spawn "$WORK/logs/upstream.log" env "${unset_registry[@]}" docker-registry serve "$WORK/upstream.yml"
UP_PID=$SPAWNED
wait_http "$UPSTREAM/v2/" "$UP_PID" 30 || { log_tail docker-registry "$WORK/logs/upstream.log"; fail "docker-registry did not start"; }
say "upstream docker-registry on $UPSTREAM"

say "seeding $NS into the upstream"
if ! exports=$(timeout --kill-after=10 300 "$CONF/seed.sh" "$UPSTREAM" "$NS" 2>"$WORK/logs/seed.log"); then
  log_tail seed.sh "$WORK/logs/seed.log"; fail "seeding the upstream failed"
fi
eval "$exports"
[ -n "${OCI_TAG_NAME:-}" ] && [ -n "${OCI_MANIFEST_DIGEST:-}" ] && [ -n "${OCI_BLOB_DIGEST:-}" ] \
  || fail "seed.sh printed no digests: $exports"
export OCI_TAG_NAME OCI_MANIFEST_DIGEST OCI_BLOB_DIGEST
say "seeded: tag $OCI_TAG_NAME, manifest $OCI_MANIFEST_DIGEST"

# -- zmirror on a fresh data dir
ZM_PORT=$(free_port)
DATA=$WORK/zmirror/data
ZMIRROR_URL=http://127.0.0.1:$ZM_PORT
USERNAME=conformance
PASSWORD=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(18))')
"$PY" "$REPO/scripts/conformance_data.py" init "$DATA" "$ZM_PORT" "$UPSTREAM" || fail "could not prepare the data dir"
"$ZM" --data "$DATA" check-config >/dev/null || fail "zmirror check-config failed"
"$ZM" --data "$DATA" user add "$USERNAME" --stdin <<<"$PASSWORD" >/dev/null 2>"$WORK/logs/cli.log" \
  || { cat "$WORK/logs/cli.log"; fail "zmirror user add failed"; }
"$PY" "$REPO/scripts/conformance_data.py" whitelist "$DATA" "$NS" on || fail "could not whitelist $NS"
mkdir -p "$WORK/zmirror"; cd "$WORK/zmirror" || fail "cd $WORK/zmirror"
spawn "$WORK/logs/zmirror.log" "$TWISTD" -n --pidfile= zmirror --data "$DATA" --listen "tcp:$ZM_PORT:interface=127.0.0.1"
ZM_PID=$SPAWNED
cd "$REPO" || fail "cd $REPO"
wait_http "$ZMIRROR_URL/v2/" "$ZM_PID" 60 || { log_tail zmirror "$WORK/logs/zmirror.log"; fail "zmirror did not start"; }
say "zmirror on $ZMIRROR_URL (upstream $UPSTREAM)"

MANIFEST_URL=$ZMIRROR_URL/v2/$NS/manifests/$OCI_TAG_NAME
ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json'

run_mode() {  # MODE [env args...]  (runs the suite; sets RESULT[MODE]; true when no spec failed)
  local mode=$1 out=$WORK/logs/suite-$1.log rc line p f; shift
  echo "== conformance $mode: run-pull.sh $ZMIRROR_URL $NS =="
  env "$@" timeout --kill-after=10 300 "$CONF/run-pull.sh" "$ZMIRROR_URL" "$NS" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n1)
  p=$(cut -d' ' -f1 <<<"$line"); f=$(cut -d' ' -f3 <<<"$line")
  if [ -z "$line" ]; then RESULT[$mode]="not run (the suite printed no result, exit $rc)"; return 1; fi
  RESULT[$mode]="$p passed, $f failed"
  [ "$rc" != 0 ] && [ "$f" = 0 ] && RESULT[$mode]+=" (suite exited $rc)"
  [ "$rc" = 0 ] && [ "$f" = 0 ] && [ "$p" -gt 0 ]
}

ok=1
# -- mode 1: anonymous, namespace whitelisted
code=$(http_code -H "$ACCEPT" "$MANIFEST_URL")
if [ "$code" != 200 ]; then
  RESULT[anonymous]="not run (anonymous manifest GET answered $code, want 200)"; ok=0
else
  run_mode anonymous -u OCI_USERNAME -u OCI_PASSWORD || ok=0
fi

# -- mode 2: registry user, whitelist entry disabled
"$PY" "$REPO/scripts/conformance_data.py" whitelist "$DATA" "$NS" off || fail "could not disable the whitelist entry"
deadline=$((SECONDS + 20))
while code=$(http_code -H "$ACCEPT" "$MANIFEST_URL"); [ "$code" != 401 ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
if [ "$code" != 401 ]; then
  RESULT[user]="not run (anonymous manifest GET answered $code with the whitelist entry disabled, want 401)"; ok=0
elif code=$(http_code -u "$USERNAME:$PASSWORD" -H "$ACCEPT" "$MANIFEST_URL"); [ "$code" != 200 ]; then
  RESULT[user]="not run (the registry user's manifest GET answered $code, want 200)"; ok=0
else
  export OCI_USERNAME=$USERNAME OCI_PASSWORD=$PASSWORD
  run_mode user || ok=0
  unset OCI_USERNAME OCI_PASSWORD
fi

[ $ok = 1 ] || { log_tail zmirror "$WORK/logs/zmirror.log"; exit 1; }
exit 0
