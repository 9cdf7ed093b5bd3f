"""Per-upstream TLS end to end: ``twistd zmirror`` in front of Debian's ``docker-registry`` serving
TLS with a CA made by the test (tests/fixtures/tlsregistry.py), one registry plain TLS and one
requiring client certificates (``http.tls.clientcas``); skopeo and podman pull through zmirror.

One zmirror mirrors five namespaces, each an upstream row with its own TLS settings:

- ``tls-ca.test``: the TLS registry, the test CA as ``ca`` (pulls);
- ``tls-noca.test``: the same registry, no ``ca`` (502 to the client, the reason in health);
- ``tls-insecure.test``: the same registry, ``tls_verify = false`` (pulls);
- ``tls-mtls.test``: the mTLS registry, ``ca`` and the client certificate and key (pulls);
- ``tls-nocert.test``: the mTLS registry, ``ca`` only (502, the handshake reason in health).

Started once per test process (the registries seeded with one small image), stopped at exit.
Skipped when ``docker-registry`` or ``skopeo`` is missing.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import (
    PODMAN_SKIP,
    Podman,
    SkopeoError,
    output,
    skopeo,
    skopeo_copy,
)
from tests.e2e.httpclient import http_request, manifest_headers
from tests.e2e.images import Image, build_images, dir_problems
from tests.fixtures.tlsregistry import TestPKI, TLSRegistry

SKIP = H.missing_tools()
NAMESPACES = ("tls-ca.test", "tls-noca.test", "tls-insecure.test", "tls-mtls.test", "tls-nocert.test")


class _World:
    """The registries, the image and the zmirror of this module."""

    def __init__(self):
        self.h = H.Harness()
        self.regs: list[TLSRegistry] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        root = self.h.root
        self.pki = pki = TestPKI(root / "pki")
        self.image: Image = build_images(root / "images", with_big=False)["dockerv2"]
        self.tls = self._registry(TLSRegistry(root, pki.server, name="tls"))
        self.mtls = self._registry(TLSRegistry(root, pki.server, client_ca=pki.client_ca, name="mtls"))
        certs = root / "client-certs"  # skopeo's --dest-cert-dir: *.cert + *.key pairs
        certs.mkdir()
        (certs / "client.cert").write_text(pki.client.cert_pem)
        (certs / "client.key").write_text(pki.client.key_pem)
        for reg in (self.tls, self.mtls):
            skopeo(["copy", "-q", "--dest-tls-verify=false", "--dest-cert-dir", str(certs), "--preserve-digests",
                    f"dir:{self.image.dir}", f"docker://{reg.host}/{self.image.ref}"], timeout=120)
        settings = {
            "tls-ca.test": (self.tls, {"ca": pki.ca.cert_pem}),
            "tls-noca.test": (self.tls, {}),
            "tls-insecure.test": (self.tls, {"tls_verify": 0}),
            "tls-mtls.test": (self.mtls, {"ca": pki.ca.cert_pem, "client_cert": pki.client.cert_pem,
                                          "client_key": pki.client.key_pem}),
            "tls-nocert.test": (self.mtls, {"ca": pki.ca.cert_pem}),
        }
        ups = [H.Upstream(ns, reg.url, namespace=ns) for ns, (reg, _s) in settings.items()]
        self.zm = self.h.start_zmirror("tls", ups, cooldown=1)
        # the TLS columns (migration 0007) are written here, then zmirror restarted to read them
        db = sqlite3.connect(str(self.zm.data / "registry.db"))
        try:
            with db:
                for ns, (_reg, cols) in settings.items():
                    for col, value in cols.items():
                        db.execute(f"UPDATE registries SET {col} = ? WHERE namespace = ?", (value, ns))
        finally:
            db.close()
        self.h.restart_zmirror(self.zm)

    def _registry(self, reg: TLSRegistry) -> TLSRegistry:
        self.regs.append(reg)
        return reg

    def stop(self) -> None:
        for reg in self.regs:
            reg.stop()
        self.h.stop()


_world: _World | None = None
_error: BaseException | None = None
_lock = threading.Lock()


def world() -> _World:
    global _world, _error
    with _lock:
        if _error is not None:
            raise H.HarnessError(f"TLS e2e world failed to start: {_error}")
        if _world is None:
            try:
                _world = _World()
            except BaseException as e:
                _error = e
                raise
            atexit.register(_world.stop)
        return _world


class UpstreamTLSE2ETests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.w = world()
        self.zm = self.w.zm

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def diag(self) -> str:
        return f"\n--- zmirror log ---\n{self.zm.tail(40)}"

    def ref(self, ns: str) -> str:
        return f"{ns}/{self.w.image.ref}"

    def pull(self, ns: str) -> None:
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, self.ref(ns), dest, timeout=120)
        except SkopeoError as e:
            self.fail(f"skopeo copy {self.ref(ns)} failed: {e}{self.diag()}")
        self.assertEqual(dir_problems(dest, self.w.image), [], f"{ns}: wrong digests")

    def refused(self, ns: str) -> str:
        """A manifest GET through zmirror for ``ns``: 502, nothing about TLS; the body returned."""
        url = f"{self.zm.url}/v2/{ns}/{self.w.image.repo}/manifests/{self.w.image.tag}"
        r = http_request("GET", url, manifest_headers())
        self.assertEqual(r.status, 502, r.describe())
        body = r.body.decode(errors="replace").lower()
        for word in ("certificate", "tls", "handshake", "verify"):
            self.assertNotIn(word, body, f"the client was told about the upstream's TLS: {body}")
        return body

    def last_error(self, ns: str) -> str:
        rows = self.zm.api("GET", "/registries").json()["items"]
        row = next(r for r in rows if r["namespace"] == ns)
        return row["health"]["last_error"] or ""

    def test_pull_with_the_ca(self):
        self.pull("tls-ca.test")

    def test_pull_with_verification_off(self):
        self.pull("tls-insecure.test")

    def test_pull_with_a_client_certificate(self):
        self.pull("tls-mtls.test")

    def test_without_the_ca_502_and_the_reason_in_health(self):
        self.refused("tls-noca.test")
        reason = self.last_error("tls-noca.test")
        self.assertIn("certificate verify failed", reason, self.diag())

    def test_without_a_client_certificate_502_and_the_reason_in_health(self):
        self.refused("tls-nocert.test")
        reason = self.last_error("tls-nocert.test")
        self.assertIn("TLS handshake failed", reason, self.diag())
        self.assertRegex(reason, "alert (certificate required|bad certificate)")

    def test_podman_pulls_with_the_ca_and_with_a_client_certificate(self):
        if PODMAN_SKIP:
            raise unittest.SkipTest(PODMAN_SKIP)
        short = Path(tempfile.mkdtemp(prefix="zm-tls-", dir="/tmp"))  # podman: runroot <= 50 characters
        self.addCleanup(shutil.rmtree, short, True)
        pm = Podman(short)
        for ns in ("tls-ca.test", "tls-mtls.test"):
            name = f"{self.zm.host}/{self.ref(ns)}"
            p = pm("pull", "-q", "--tls-verify=false", name, timeout=180)
            self.assertEqual(p.returncode, 0, f"podman pull {name}: {output(p)}{self.diag()}")
            p = pm("image", "inspect", "--format", "{{.Digest}}", name, timeout=60)
            self.assertEqual(p.stdout.strip(), self.w.image.digest, output(p))
