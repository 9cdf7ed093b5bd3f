#!/usr/bin/env bash
# Installs the Debian packages the end-to-end tests use, when missing and when root.
# Real upstream registry (docker-registry), real client (skopeo), headless browser (chromium),
# and the clients of the access-control e2e tests: podman (+ netavark, its network stack), dockerd and
# the docker CLI (docker.io), containerd with ctr, runc; PostgreSQL (the store tests run them against
# SQLite and a real PostgreSQL: tests/fixtures/pgserver.py runs initdb/pg_ctl as the postgres user in a temp dir);
# nginx (tests/test_cluster_docs.py checks docs/cluster/nginx.conf with `nginx -t`, and the cluster e2e
# tests run it in front of three nodes, prefix, pid and logs in a temp dir); the egress proxies the
# upstream traffic goes through in the proxy tests: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5).
# The tests start their own dockerd/containerd/postgres/nginx with state in a temp dir; apt must not
# start them as system services (policy-rc.d below).
set -u
PKGS="docker-registry skopeo chromium chromium-driver fonts-wqy-microhei curl
      podman netavark docker.io containerd runc postgresql nginx tinyproxy microsocks"
missing=()
for p in $PKGS; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${missing[*]} (not root or no apt-get): the e2e tests that need them are skipped" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d; had_policy=0
[ -e "$policy" ] && had_policy=1
# keep apt from starting the registry, dockerd, containerd, postgres or nginx as system services
[ $had_policy = 0 ] && printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
rc=$?
[ $had_policy = 0 ] && rm -f "$policy"
exit $rc
