"""Egress proxies end to end: ``twistd zmirror`` pulls from Debian's ``docker-registry``
serving TLS (a CA made by the test, tests/fixtures/tlsregistry.py) through real proxies
(tests/fixtures/proxies.py): tinyproxy (HTTP CONNECT, Basic auth) and microsocks (SOCKS5,
user name and password); the proxies' own logs show the tunnels.

One zmirror mirrors six namespaces, each an upstream row with its own ``proxy`` (and the test
CA for the TLS registry):

- ``via-connect.test``: through tinyproxy (pulls, tinyproxy logs ``CONNECT``);
- ``via-socks.test``: through microsocks with ``socks5h://`` (pulls, microsocks logs the tunnel);
- ``token-via-http.test``: a plain-HTTP registry with Docker-Hub-style token auth (the token
  realm on another port) through tinyproxy: absolute-form requests to both, in its log;
- ``token-via-socks.test``: the same through microsocks (plain tunnels to both);
- ``wrong-password.test``: through tinyproxy with a wrong password (502, the reason in health,
  the password nowhere);
- ``dead-proxy.test``: through a proxy that is not there (502, the reason in health).

Started once per test process, stopped at exit.  Skipped when ``docker-registry``, ``skopeo``,
``tinyproxy`` or ``microsocks`` is missing.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import threading
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo, skopeo_copy
from tests.e2e.httpclient import http_request, manifest_headers
from tests.e2e.images import Image, build_images, dir_problems
from tests.fixtures.helpers import free_port
from tests.fixtures.proxies import microsocks, missing_proxies, tinyproxy
from tests.fixtures.tlsregistry import TestPKI, TLSRegistry

SKIP = H.missing_tools() or missing_proxies()
WRONG = "not-the-password-9Zq"


class _World:
    def __init__(self):
        self.h = H.Harness()
        self.stoppable: list = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        root = self.h.root
        pki = TestPKI(root / "pki")
        self.image: Image = build_images(root / "images", with_big=False)["dockerv2"]
        self.reg = TLSRegistry(root, pki.server, name="tls")
        self.stoppable.append(self.reg)
        skopeo(["copy", "-q", "--dest-tls-verify=false", "--preserve-digests",
                f"dir:{self.image.dir}", f"docker://{self.reg.host}/{self.image.ref}"], timeout=120)
        self.token = self.h.start_token()
        self.h.push(self.image, self.token)
        self.http = tinyproxy(root / "tinyproxy")
        self.stoppable.append(self.http)
        self.socks = microsocks(root / "microsocks")
        self.stoppable.append(self.socks)
        self.proxies = {
            "via-connect.test": self.http.url(),
            "via-socks.test": self.socks.url(scheme="socks5h"),
            "wrong-password.test": self.http.url(password=WRONG),
            "dead-proxy.test": f"http://127.0.0.1:{free_port()}",
        }
        ups = [H.Upstream(ns, self.reg.url, namespace=ns) for ns in self.proxies]
        self.proxies["token-via-http.test"] = self.http.url()
        self.proxies["token-via-socks.test"] = self.socks.url(scheme="socks5h")
        ups += [H.Upstream(ns, f"http://{self.token.host}", H.USER, H.PASSWORD, namespace=ns)
                for ns in ("token-via-http.test", "token-via-socks.test")]
        self.zm = self.h.start_zmirror("egress", ups, cooldown=1)
        db = sqlite3.connect(str(self.zm.data / "registry.db"))  # the proxy and ca columns (migration 0007)
        try:
            with db:
                for ns, proxy in self.proxies.items():
                    db.execute("UPDATE registries SET proxy = ?, ca = ? WHERE namespace = ?",
                               (proxy, "" if ns.startswith("token-") else pki.ca.cert_pem, ns))
        finally:
            db.close()
        self.h.restart_zmirror(self.zm)

    def stop(self) -> None:
        for s in self.stoppable:
            s.stop()
        self.h.stop()


_world: _World | None = None
_error: BaseException | None = None
_lock = threading.Lock()


def world() -> _World:
    global _world, _error
    with _lock:
        if _error is not None:
            raise H.HarnessError(f"egress e2e world failed to start: {_error}")
        if _world is None:
            try:
                _world = _World()
            except BaseException as e:
                _error = e
                raise
            atexit.register(_world.stop)
        return _world


class EgressE2ETests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.w = world()
        self.zm = self.w.zm

    def diag(self) -> str:
        return f"\n--- zmirror log ---\n{self.zm.tail(40)}"

    def pull(self, ns: str) -> None:
        dest = Path(self.mktemp()).resolve() / "image"
        dest.parent.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, dest.parent, True)
        try:
            skopeo_copy(self.zm.host, f"{ns}/{self.w.image.ref}", dest, timeout=120)
        except SkopeoError as e:
            self.fail(f"skopeo copy {ns}/{self.w.image.ref} failed: {e}{self.diag()}")
        self.assertEqual(dir_problems(dest, self.w.image), [], f"{ns}: wrong digests")

    def refused(self, ns: str) -> str:
        """A manifest GET through zmirror for ``ns``: 502; the upstream's reason in health."""
        url = f"{self.zm.url}/v2/{ns}/{self.w.image.repo}/manifests/{self.w.image.tag}"
        r = http_request("GET", url, manifest_headers())
        self.assertEqual(r.status, 502, r.describe())
        self.assertNotIn("proxy", r.body.decode(errors="replace").lower())
        rows = self.zm.api("GET", "/registries").json()["items"]
        row = next(r for r in rows if r["namespace"] == ns)
        self.assertNotIn(WRONG, repr(row))
        self.assertNotIn(WRONG, self.zm.tail(400))
        return row["health"]["last_error"] or ""

    def test_pull_through_http_connect(self):
        self.pull("via-connect.test")
        self.assertIn(f"CONNECT 127.0.0.1:{self.w.reg.port} HTTP/1.1", self.w.http.log())

    def test_pull_through_socks5h(self):
        self.pull("via-socks.test")
        self.assertIn(f"connected to 127.0.0.1:{self.w.reg.port}", self.w.socks.log())

    def test_token_auth_through_http_proxy_in_absolute_form(self):
        self.pull("token-via-http.test")
        log = self.w.http.log()
        self.assertIn(f"GET http://127.0.0.1:{self.w.token.issuer_port}/token?", log)
        self.assertIn(f"GET http://{self.w.token.host}/v2/", log)

    def test_token_auth_through_socks5h(self):
        self.pull("token-via-socks.test")
        log = self.w.socks.log()
        self.assertIn(f"connected to 127.0.0.1:{self.w.token.issuer_port}", log)
        self.assertIn(f"connected to {self.w.token.host}", log)

    def test_wrong_proxy_password(self):
        reason = self.refused("wrong-password.test")
        self.assertIn(f"proxy 127.0.0.1:{self.w.http.port} refused CONNECT: 401", reason, self.diag())

    def test_proxy_not_there(self):
        reason = self.refused("dead-proxy.test")
        self.assertIn("cannot connect to proxy 127.0.0.1:", reason, self.diag())
