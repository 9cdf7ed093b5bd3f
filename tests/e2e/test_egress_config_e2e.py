"""End to end: the egress proxy of ``[upstream]`` in config.toml and of the
environment, with the registry's TLS settings set through the admin API.

Debian's ``docker-registry`` serves TLS with a CA made by the test (set as the
registry's ``ca`` with ``PUT /api/registries/{id}``, and tried before saving with
``POST /api/registries/test``); zmirror instances started by the test pull from it:

- ``[upstream] proxy`` = tinyproxy (Basic auth): the pull goes through it (its
  log shows the ``CONNECT``); a registry whose own ``proxy`` is "" goes direct;
- nothing in the file, ``HTTPS_PROXY`` in the environment = another tinyproxy:
  the pull goes through that one;
- ``HTTPS_PROXY`` pointing nowhere but ``proxy = ""`` in the file: direct (the
  environment does not apply);
- ``HTTPS_PROXY`` pointing nowhere with ``NO_PROXY = 127.0.0.1``: direct.

Skips when docker-registry, skopeo or tinyproxy is missing."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo, skopeo_copy
from tests.e2e.images import build_images, dir_problems
from tests.fixtures.helpers import free_port
from tests.fixtures.proxies import missing_proxies, tinyproxy
from tests.fixtures.tlsregistry import TestPKI, TLSRegistry

SKIP = H.missing_tools() or missing_proxies()
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@contextmanager
def environment(**values):
    """The proxy variables of this process (which zmirror inherits when it is
    spawned) set to ``values`` for the block, every other one unset."""
    saved = {k: os.environ.get(k) for v in _PROXY_VARS for k in (v, v.lower())}
    for k in saved:
        os.environ.pop(k, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class EgressConfigE2ETests(unittest.TestCase):
    skip = SKIP
    timeout = 300

    def setUp(self):
        self.h = H.Harness()
        self.addCleanup(self.h.stop)
        root = self.h.root
        self.pki = TestPKI(root / "pki")
        self.image = build_images(root / "images", with_big=False)["dockerv2"]
        self.reg = TLSRegistry(root, self.pki.server, name="tls")
        self.addCleanup(self.reg.stop)
        skopeo(["copy", "-q", "--dest-tls-verify=false", "--preserve-digests",
                f"dir:{self.image.dir}", f"docker://{self.reg.host}/{self.image.ref}"], timeout=120)
        self.dead = f"http://127.0.0.1:{free_port()}"  # no proxy listens there

    def proxy(self, name: str):
        p = tinyproxy(self.h.root / name)
        self.addCleanup(p.stop)
        return p

    def zmirror(self, name: str, upstream_toml: str = "", **env) -> H.ZMirror:
        """A zmirror with one upstream (namespace ``tls.test``) whose ``ca`` is set
        through the admin API, after testing it unsaved."""
        with environment(**env):
            zm = self.h.start_zmirror(name, [H.Upstream("tls", self.reg.url, namespace="tls.test")],
                                      cooldown=1, upstream_toml=upstream_toml)
        [row] = [r for r in zm.api("GET", "/registries").json()["items"] if r["namespace"] == "tls.test"]
        self.rid = row["id"]
        return zm

    def set_ca(self, zm: H.ZMirror, **more) -> dict:
        body = {"ca": self.pki.ca.cert_pem, **more}
        tried = zm.api("POST", "/registries/test", {"id": self.rid, **body})
        self.assertEqual(tried.status, 200, tried.describe())
        r = zm.api("PUT", f"/registries/{self.rid}", body)
        self.assertEqual(r.status, 200, r.describe())
        return tried.json()

    def pull(self, zm: H.ZMirror) -> None:
        dest = Path(self.mktemp()).resolve() / "image"
        dest.parent.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, dest.parent, True)
        try:
            skopeo_copy(zm.host, f"tls.test/{self.image.ref}", dest, timeout=120)
        except SkopeoError as e:
            self.fail(f"skopeo copy through {zm.name} failed: {e}\n--- zmirror log ---\n{zm.tail(40)}")
        self.assertEqual(dir_problems(dest, self.image), [])

    def test_config_proxy_and_a_registry_that_goes_direct(self):
        via = self.proxy("file-proxy")
        zm = self.zmirror("file-proxy", f'proxy = "{via.url()}"', HTTPS_PROXY=self.dead)
        tried = self.set_ca(zm)
        self.assertIs(tried["ok"], True, tried)
        self.assertEqual([s["step"] for s in tried["steps"]], ["dns", "tcp", "proxy", "tls", "v2"])
        self.pull(zm)
        connect = f"CONNECT 127.0.0.1:{self.reg.port} HTTP/1.1"
        self.assertIn(connect, via.log())
        # the registry's own proxy "" (direct) wins over the file's
        r = zm.api("PUT", f"/registries/{self.rid}", {"proxy": ""})
        self.assertEqual(r.status, 200, r.describe())
        before = via.log().count(connect)
        self.pull(zm)
        self.assertEqual(via.log().count(connect), before)
        # nothing about the proxy's credentials in the log
        self.assertNotIn(via.password, zm.tail(400))

    def test_environment_when_the_file_sets_neither(self):
        via = self.proxy("env-proxy")
        zm = self.zmirror("env-proxy", HTTPS_PROXY=via.url())
        self.set_ca(zm)
        self.pull(zm)
        self.assertIn(f"CONNECT 127.0.0.1:{self.reg.port} HTTP/1.1", via.log())
        self.assertNotIn(via.password, zm.tail(400))

    def test_proxy_empty_in_the_file_ignores_the_environment(self):
        zm = self.zmirror("file-direct", 'proxy = ""', HTTPS_PROXY=self.dead)
        tried = self.set_ca(zm)
        self.assertNotIn("proxy", [s["step"] for s in tried["steps"]])
        self.pull(zm)

    def test_no_proxy_of_the_environment_bypasses_its_proxy(self):
        zm = self.zmirror("env-no-proxy", HTTPS_PROXY=self.dead, NO_PROXY="localhost,127.0.0.1")
        self.set_ca(zm)
        self.pull(zm)
