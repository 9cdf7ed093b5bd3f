"""The shipped cluster files (docs/cluster/): nginx.conf checked by Debian's ``nginx -t`` and read
for the directives the cluster relies on; docker-compose.yml parsed and its structure checked (and
``docker compose config`` run where Docker Compose is installed); the node config files validated
by zmirror's own config parser."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import cluster as C
from zmirror.config import parse_config

DOCS = C.DOCS
NGINX_MISSING = None if C.nginx_bin() else (
    "nginx not installed (Debian: apt-get install nginx, or run scripts/system-deps.sh as root): "
    "`nginx -t` of docs/cluster/nginx.conf skipped")
try:
    import yaml
except ImportError:  # PyYAML is in the test extras (setup.py)
    yaml = None
YAML_MISSING = None if yaml else "PyYAML is not installed (pip install -e '.[test]')"


def _directives(text: str) -> str:
    """The config without comments."""
    return "\n".join(line.split("#", 1)[0].rstrip() for line in text.splitlines())


def _block(text: str, head: str) -> str:
    """The body of the first ``head { ... }`` block (braces balanced)."""
    m = re.search(r"(?m)^\s*" + head + r"\s*\{", text)
    if m is None:
        raise AssertionError(f"no block {head!r}")
    depth, i = 1, m.end()
    while depth:
        c = text[i]
        depth += {"{": 1, "}": -1}.get(c, 0)
        i += 1
    return text[m.end():i - 1]


def _value(body: str, directive: str) -> str | None:
    m = re.search(r"(?m)^\s*" + re.escape(directive) + r"\s+([^;]*);", body)
    return m.group(1).strip() if m else None


def _seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", v)
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class NginxConfTests(unittest.TestCase):
    def setUp(self):
        self.text = _directives(C.NGINX_CONF.read_text())
        self.http = _block(self.text, "http")
        self.server = _block(self.http, "server")

    def render(self, nodes=("127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083")) -> Path:
        d = Path(self.mktemp()).resolve()
        return C.render_nginx(d, listen_port=C.H.free_port(), nodes=list(nodes))

    def test_nginx_accepts_the_shipped_config(self):
        if NGINX_MISSING:
            raise unittest.SkipTest(NGINX_MISSING)
        conf = self.render()
        p = subprocess.run(C.nginx_argv(conf, test=True), capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, f"nginx -t: {p.stdout}{p.stderr}")
        self.assertNotIn("[warn]", p.stderr, p.stderr)

    def test_nginx_refuses_a_broken_copy(self):
        """The check above can fail: the same run on a copy with a typo is refused."""
        if NGINX_MISSING:
            raise unittest.SkipTest(NGINX_MISSING)
        conf = self.render()
        conf.write_text(conf.read_text().replace("proxy_buffering off;", "proxy_bufering off;"))
        p = subprocess.run(C.nginx_argv(conf, test=True), capture_output=True, text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("proxy_bufering", p.stderr)

    def test_rendering_changes_only_addresses_and_paths(self):
        conf = self.render()
        rendered = conf.read_text().splitlines()
        shipped = C.NGINX_CONF.read_text().splitlines()
        allowed = re.compile(r"^\s*(user|pid|error_log|access_log|listen|"
                             r"(client_body|proxy|fastcgi|uwsgi|scgi)_temp_path)\b")
        changed = [line[1:] for line in difflib.unified_diff(shipped, rendered, lineterm="", n=0)
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        self.assertTrue(changed, "the rendered file is the shipped one: nothing made it run here")
        self.assertEqual([line for line in changed if not allowed.match(line)], [])
        nodes = (conf.parent / C.NODES_INCLUDE).read_text()
        self.assertEqual(re.findall(r"(?m)^server (\S+) max_fails=1 fail_timeout=10s;$", nodes),
                         ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"])

    def upstream(self, name: str) -> str:
        return _block(self.http, rf"upstream\s+{name}")

    def location_upstream(self, location: str) -> str:
        body = _block(self.server, r"location\s+" + location)
        m = re.search(r"proxy_pass\s+http://([\w.-]+)\s*;", body)
        self.assertIsNotNone(m, f"location {location}: no proxy_pass")
        return m.group(1)

    def test_blobs_by_consistent_hash_the_rest_round_robin(self):
        blobs = self.upstream(self.location_upstream(re.escape("~ ^/v2/.+/blobs/")))
        hashed = _value(blobs, "hash")
        self.assertIsNotNone(hashed, "the blob upstream must hash")
        key, *flags = hashed.split()
        self.assertEqual(flags, ["consistent"])
        rest = self.upstream(self.location_upstream("/"))
        self.assertIsNone(_value(rest, "hash"), "everything else goes round-robin")
        for body in (blobs, rest):
            self.assertIn("include zmirror-nodes.conf;", body)
            self.assertIsNotNone(_value(body, "zone"), "node failures shared by all worker processes")
            self.assertIsNotNone(_value(body, "keepalive"), "keep-alive connections to the nodes")
            # below the nodes' 60 s idle timeout: nginx must not reuse a connection a node just closed
            self.assertLess(_seconds(_value(body, "keepalive_timeout")), 60)
        # the key: a blob's digest, the full URI for anything else
        self.assertEqual(key, "$zmirror_blob_key")
        self.assertIn("default $request_uri;", _block(self.http, r"map\s+\$uri\s+\$zmirror_blob_key"))

    def blob_key(self, uri: str) -> str:
        """What the map gives for ``uri`` (PCRE named groups in Python spelling)."""
        body = _block(self.http, r"map\s+\$uri\s+\$zmirror_blob_key")
        for m in re.finditer(r'(?m)^\s*"~(.*)"\s+(\S+);', body):
            pattern = m.group(1).replace("(?<", "(?P<")
            hit = re.search(pattern, uri)
            if hit:
                return re.sub(r"\$(\w+)", lambda v: hit.group(v.group(1)), m.group(2))
        return "$request_uri"

    def test_a_blob_has_one_key_whatever_repository_names_it(self):
        digest = "sha256:" + "ab" * 32
        keys = {self.blob_key(f"/v2/{repo}/blobs/{digest}")
                for repo in ("library/debian", "e2e/oci", "ghcr.io/owner/img", "a/b/c/d")}
        self.assertEqual(keys, {digest})
        self.assertEqual(self.blob_key("/v2/e2e/oci/blobs/uploads/"), "$request_uri")
        self.assertEqual(self.blob_key("/v2/e2e/oci/manifests/1"), "$request_uri")

    def test_streaming_retries_timeouts_and_headers(self):
        s = self.server
        self.assertEqual(_value(s, "proxy_buffering"), "off")
        self.assertEqual(_value(s, "proxy_request_buffering"), "off")
        self.assertEqual(_value(s, "proxy_http_version"), "1.1")
        self.assertEqual(_value(s, "proxy_set_header Connection"), '""')
        self.assertEqual(set(_value(s, "proxy_next_upstream").split()),
                         {"error", "timeout", "http_502", "http_503", "http_504"})
        self.assertGreaterEqual(int(_value(s, "proxy_next_upstream_tries")), 2)
        self.assertLessEqual(_seconds(_value(s, "proxy_connect_timeout")), 10)
        for d in ("proxy_read_timeout", "proxy_send_timeout"):
            self.assertGreaterEqual(_seconds(_value(s, d)), 300, f"{d}: big blobs over slow upstreams")
        self.assertEqual(_value(s, "proxy_set_header Host"), "$http_host")
        self.assertEqual(_value(s, "proxy_set_header X-Forwarded-For"), "$proxy_add_x_forwarded_for")
        self.assertEqual(_value(s, "proxy_set_header X-Forwarded-Proto"), "$scheme")
        self.assertEqual(_value(s, "proxy_set_header X-Forwarded-Host"), "$http_host")
        # no 1m default: zmirror limits bodies itself, with registry JSON errors
        self.assertEqual(_value(self.http, "client_max_body_size"), "0")


class ComposeTests(unittest.TestCase):
    skip = YAML_MISSING

    def setUp(self):
        self.compose = yaml.safe_load((DOCS / "docker-compose.yml").read_text())
        self.services = self.compose["services"]
        self.nodes = sorted(n for n in self.services if re.fullmatch(r"node\d+", n))

    def mounts(self, service: str) -> dict[str, str]:
        """container path → source of the service's volumes."""
        out = {}
        for v in self.services[service].get("volumes", []):
            src, dst, *_ = v.split(":")
            out[dst] = src
        return out

    def node_config(self, node: str):
        src = self.mounts(node)["/etc/zmirror/config.toml"]
        path = (DOCS / src).resolve()
        return parse_config(path.read_text(), data_dir=Path("/app/data"), config_path=path)

    def test_services_and_health_checks(self):
        self.assertEqual(set(self.services), {"postgres", "nginx", *self.nodes})
        self.assertEqual(self.nodes, ["node1", "node2", "node3"])
        checks = {name: " ".join(s["healthcheck"]["test"]) for name, s in self.services.items()}
        self.assertIn("pg_isready", checks["postgres"])
        for node in self.nodes:
            self.assertIn("/readyz", checks[node], node)
        self.assertIn("/healthz", checks["nginx"])
        for name, s in self.services.items():
            self.assertIn(s["healthcheck"]["test"][0], ("CMD", "CMD-SHELL"), name)

    def test_start_order_waits_for_health(self):
        for node in self.nodes:
            self.assertEqual(self.services[node]["depends_on"], {"postgres": {"condition": "service_healthy"}})
        self.assertEqual(self.services["nginx"]["depends_on"],
                         {n: {"condition": "service_healthy"} for n in self.nodes})

    def test_nodes_built_from_the_project_and_configured_by_their_file(self):
        for node in self.nodes:
            s = self.services[node]
            self.assertEqual((DOCS / s["build"]["context"] / s["build"]["dockerfile"]).resolve(),
                             (C.H.REPO / "Dockerfile").resolve())
            self.assertEqual(s["command"][s["command"].index("--config") + 1], "/etc/zmirror/config.toml")
            self.assertTrue(self.mounts(node)["/etc/zmirror/config.toml"].startswith("./"))

    def test_each_node_its_own_cache_volume(self):
        sources = []
        for node in self.nodes:
            src = self.mounts(node)["/app/data"]
            self.assertIn(src, self.compose["volumes"], f"{node}: /app/data is a named volume")
            self.assertTrue(str(self.node_config(node).cache_dir).startswith("/app/data/"), node)
            sources.append(src)
        self.assertEqual(len(set(sources)), len(self.nodes), f"shared cache volumes: {sources}")

    def test_node_configs_share_the_database_and_trust_only_nginx(self):
        configs = {n: self.node_config(n) for n in self.nodes}
        urls = {c.database.url for c in configs.values()}
        self.assertEqual(len(urls), 1)
        url = urls.pop()
        self.assertTrue(url.startswith("postgresql://") and "@postgres:5432/" in url, url)
        self.assertNotIn(":", url.split("://", 1)[1].split("@", 1)[0], "no password in the node files")
        self.assertIn("PGPASSWORD", self.services["node1"]["environment"])
        nginx_ip = self.services["nginx"]["networks"]["cluster"]["ipv4_address"]
        subnet = ipaddress.ip_network(self.compose["networks"]["cluster"]["ipam"]["config"][0]["subnet"])
        self.assertIn(ipaddress.ip_address(nginx_ip), subnet)
        for node, c in configs.items():
            self.assertEqual(c.server.trusted_proxies, (nginx_ip,), node)
            self.assertNotIn("ports", self.services[node], f"{node}: only nginx reaches the nodes")

    def test_node_files_hold_only_keys_zmirror_knows(self):
        """``[server] node`` included: each node names itself (access log, logs)."""
        for node in self.nodes:
            c = self.node_config(node)
            self.assertEqual(c.warnings, (), node)
        self.assertEqual([self.node_config(n).server.node for n in self.nodes], self.nodes)

    def test_nginx_gets_the_shipped_config_and_the_compose_node_list(self):
        m = self.mounts("nginx")
        self.assertEqual((DOCS / m["/etc/nginx/zmirror/nginx.conf"]).resolve(), C.NGINX_CONF.resolve())
        nodes_file = DOCS / m["/etc/nginx/zmirror/zmirror-nodes.conf"]
        listed = re.findall(r"(?m)^server (\S+) max_fails=1 fail_timeout=10s;$", nodes_file.read_text())
        ports = {n: self.node_config(n).server.port for n in self.nodes}
        self.assertEqual(listed, [f"{n}:{ports[n]}" for n in self.nodes])
        self.assertIn("/etc/nginx/zmirror/nginx.conf", self.services["nginx"].get("command") or
                      (DOCS / self.services["nginx"]["build"]["dockerfile"]).read_text())

    def test_docker_compose_config(self):
        if shutil.which("docker-compose"):
            argv = ["docker-compose"]
        elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                       timeout=30).returncode == 0:
            argv = ["docker", "compose"]
        else:
            raise unittest.SkipTest("Docker Compose is not installed: `docker compose config` skipped "
                                    "(the structure is checked above)")
        env = dict(os.environ, POSTGRES_PASSWORD="compose-config-check")
        p = subprocess.run(argv + ["-f", str(DOCS / "docker-compose.yml"), "config", "-q"], capture_output=True,
                           text=True, timeout=60, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)


class SystemDepsTests(unittest.TestCase):
    def test_nginx_is_installed_by_system_deps(self):
        text = (C.H.REPO / "scripts" / "system-deps.sh").read_text()
        pkgs = re.search(r'PKGS="([^"]*)"', text).group(1).split()
        self.assertIn("nginx", pkgs)
