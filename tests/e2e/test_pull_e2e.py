"""Pulls through ``twistd zmirror`` from real registries with a real client (skopeo).

The environment (four distribution 2.8 registries, seeded test images and up to
three zmirror instances) is started once per test process by
``environment.shared()`` and stopped at exit; see ``tests/e2e/environment.py``.
Skipped when ``docker-registry`` or ``skopeo`` is missing.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo_copy, skopeo_inspect_raw
from tests.e2e.environment import shared
from tests.e2e.httpclient import http_request, manifest_headers
from tests.e2e.images import (MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, Blob,
                              Image, MiB, dir_problems, sha256_hex)

SKIP = H.missing_tools()
API_VERSION = "registry/2.0"


class E2ECase(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.env = shared()

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def copy(self, host: str, ref: str, image: Image, *, creds=None, logs=()) -> Path:
        """skopeo copy --all docker://HOST/REF dir:… and every digest checked against ``image``."""
        dest = self.workdir() / "image"
        try:
            skopeo_copy(host, ref, dest, creds=creds)
        except SkopeoError as e:
            self.fail(f"skopeo copy of {host}/{ref} failed: {e}" + "".join(
                f"\n--- {p.name} log tail ---\n{p.tail(40)}" for p in logs))
        problems = dir_problems(dest, image)
        self.assertEqual(problems, [], f"{host}/{ref}: " + "; ".join(problems))
        return dest

    def inspect_digest(self, host: str, ref: str, *, creds=None, logs=()) -> str:
        try:
            raw = skopeo_inspect_raw(host, ref, creds=creds)
        except SkopeoError as e:
            self.fail(f"skopeo inspect --raw {host}/{ref} failed: {e}" + "".join(
                f"\n--- {p.name} log tail ---\n{p.tail(40)}" for p in logs))
        return "sha256:" + sha256_hex(raw)

    # shared HTTP checks, run against an upstream directly (to prove the check) and through zmirror

    def check_head_manifest(self, base: str, image: Image, ref: str) -> None:
        r = http_request("HEAD", f"{base}/v2/{image.repo}/manifests/{ref}", manifest_headers())
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.header("Docker-Content-Digest"), image.digest, r.describe())
        self.assertEqual(r.header("Content-Length"), str(len(image.manifest)), r.describe())
        self.assertEqual(r.header("Content-Type"), image.media_type, r.describe())
        self.assertEqual(r.body, b"")
        g = http_request("GET", f"{base}/v2/{image.repo}/manifests/{ref}", manifest_headers())
        self.assertEqual(g.status, 200, g.describe())
        self.assertEqual(g.body, image.manifest, "manifest bytes differ from the upstream's")
        self.assertEqual(g.header("Docker-Content-Digest"), image.digest, g.describe())
        self.assertEqual(g.header("Content-Type"), image.media_type, g.describe())

    def check_tls_probe(self, port: int) -> None:
        """skopeo/podman open with a TLS ClientHello even for an insecure registry and wait up to 10 s
        for an answer before retrying over HTTP: a plain-HTTP server must answer or close promptly."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                ctx.wrap_socket(sock, server_hostname="127.0.0.1").close()
                self.fail("TLS handshake succeeded on a plain-HTTP port")
            except TimeoutError:
                self.fail(f"no answer to a TLS ClientHello on 127.0.0.1:{port} within 5 s: every skopeo/podman "
                          "pull waits 10 s for its TLS probe before falling back to HTTP")
            except (ssl.SSLError, ConnectionError, OSError):
                pass
        self.assertLess(time.monotonic() - t0, 3.0)

    def check_head_blob(self, base: str, image: Image, blob: Blob) -> None:
        r = http_request("HEAD", f"{base}/v2/{image.repo}/blobs/{blob.digest}")
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.header("Content-Length"), str(blob.size), r.describe())
        self.assertEqual(r.header("Docker-Content-Digest"), blob.digest, r.describe())
        self.assertEqual(r.body, b"")

    def check_range(self, base: str, image: Image, blob: Blob, start: int, end: int) -> None:
        r = http_request("GET", f"{base}/v2/{image.repo}/blobs/{blob.digest}", [("Range", f"bytes={start}-{end}")])
        self.assertEqual(r.status, 206, r.describe())
        self.assertEqual(r.header("Content-Range"), f"bytes {start}-{end}/{blob.size}", r.describe())
        self.assertEqual(r.header("Content-Length"), str(end - start + 1), r.describe())
        self.assertEqual(len(r.body), end - start + 1)
        self.assertTrue(r.body == blob.read(start, end - start + 1), "Range body has the wrong bytes")


def _layer(image: Image) -> Blob:
    """The first layer (incompressible random data, ~96 KiB)."""
    return image.blobs[1]


# --------------------------------------------------------------------------- the harness itself


class HarnessTests(E2ECase):
    """The upstreams serve the images we built, with our digests, straight to skopeo."""

    def test_images_pushed_with_their_digests(self):
        pushed = {
            "open": ["dockerv2", "oci", "ociindex", "dockerlist", "big"],
            "open2": ["onlyb"],
            "token": ["dockerv2", "ociindex"],
            "basic": ["oci", "dockerlist"],
        }
        for reg_name, keys in pushed.items():
            reg = self.env.registries[reg_name]
            for key in keys:
                img = self.env.images[key]
                got = self.inspect_digest(reg.host, img.ref, creds=reg.creds_arg)
                self.assertEqual(got, img.digest, f"{reg_name} {img.ref}")
                for child in img.children:
                    got = self.inspect_digest(reg.host, f"{img.repo}@{child.digest}", creds=reg.creds_arg)
                    self.assertEqual(got, child.digest, f"{reg_name} {img.repo}@{child.digest}")

    def test_direct_copy_from_open_upstream(self):
        reg = self.env.registries["open"]
        for key in ("dockerv2", "oci", "ociindex", "dockerlist"):
            img = self.env.images[key]
            self.copy(reg.host, img.ref, img)

    def test_direct_big_layer(self):
        img = self.env.images["big"]
        self.assertGreaterEqual(img.largest_blob().size, 100 * MiB)
        self.copy(self.env.registries["open"].host, img.ref, img)

    def test_direct_failover_fixtures(self):
        # what the failover tests rely on: the first upstream refuses connections, open has no onlyb
        port = int(self.env.dead.rsplit(":", 1)[1])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        img = self.env.images["onlyb"]
        r = http_request("GET", f"{self.env.registries['open'].url}/v2/{img.repo}/manifests/{img.tag}",
                         manifest_headers())
        self.assertEqual(r.status, 404, r.describe())
        self.copy(self.env.registries["open2"].host, img.ref, img)

    def test_direct_token_upstream(self):
        reg = self.env.registries["token"]
        r = http_request("GET", f"{reg.url}/v2/")
        self.assertEqual(r.status, 401)
        self.assertIn('Bearer realm="http://127.0.0.1:', r.header("WWW-Authenticate"))
        self.copy(reg.host, "e2e/dockerv2:1", self.env.images["dockerv2"])  # anonymous
        self.copy(reg.host, "e2e/ociindex:1", self.env.images["ociindex"], creds=reg.creds_arg)

    def test_direct_basic_upstream(self):
        reg = self.env.registries["basic"]
        r = http_request("GET", f"{reg.url}/v2/")
        self.assertEqual(r.status, 401)
        self.assertIn("Basic", r.header("WWW-Authenticate"))
        with self.assertRaises(SkopeoError):
            skopeo_copy(reg.host, "e2e/oci:1", self.workdir() / "x")
        self.copy(reg.host, "e2e/oci:1", self.env.images["oci"], creds=reg.creds_arg)

    def test_direct_tls_probe(self):
        self.check_tls_probe(self.env.registries["open"].port)

    def test_direct_head_and_range(self):
        # the HTTP checks used on zmirror below hold for the real registry
        base = self.env.registries["open"].url
        img = self.env.images["oci"]
        self.check_head_manifest(base, img, img.tag)
        self.check_head_manifest(base, img, img.digest)
        self.check_head_blob(base, img, _layer(img))
        self.check_range(base, img, _layer(img), 1000, 50999)


# --------------------------------------------------------------------------- through zmirror


class ProxyPullTests(E2ECase):
    """zmirror ``main``: upstreams [dead (connection refused), open, open2] in priority order."""

    def setUp(self):
        super().setUp()
        self.zm = self.env.proxy("main")
        self.logs = (self.zm.proc,)

    def pull(self, key: str, ref=None):
        img = self.env.images[key]
        return self.copy(self.zm.host, ref or img.ref, img, logs=self.logs)

    def test_ping(self):
        r = http_request("GET", f"{self.zm.url}/v2/")
        # 200, or 401 with a challenge when zmirror hands out its own (anonymous) tokens
        self.assertIn(r.status, (200, 401), r.describe())
        if r.status == 401:
            self.assertTrue(r.header("WWW-Authenticate"), r.describe())
        self.assertEqual(r.header("Docker-Distribution-API-Version"), API_VERSION)

    def test_tls_probe_answered_promptly(self):
        self.check_tls_probe(self.zm.port)

    def test_docker_v2_image(self):
        self.pull("dockerv2")

    def test_oci_image(self):
        self.pull("oci")

    def test_oci_index_children_by_digest(self):
        img = self.env.images["ociindex"]
        self.pull("ociindex")
        for child in img.children:
            self.assertEqual(self.inspect_digest(self.zm.host, f"{img.repo}@{child.digest}", logs=self.logs),
                             child.digest)

    def test_docker_manifest_list_children_by_digest(self):
        img = self.env.images["dockerlist"]
        self.pull("dockerlist")
        for child in img.children:
            self.assertEqual(self.inspect_digest(self.zm.host, f"{img.repo}@{child.digest}", logs=self.logs),
                             child.digest)

    def test_pull_by_digest(self):
        img = self.env.images["dockerv2"]
        self.pull("dockerv2", f"{img.repo}@{img.digest}")

    def test_official_image_short_name(self):
        # a one-component name is an official image: e2elist -> library/e2elist
        self.pull("dockerlist", "e2elist:1")

    def test_big_layer(self):
        img = self.env.images["big"]
        self.assertGreaterEqual(img.largest_blob().size, 100 * MiB)
        self.pull("big")

    def test_failover_first_upstream_down(self):
        self.assertEqual(self.zm.upstreams[0].url, self.env.dead)
        self.pull("oci")

    def test_failover_first_upstream_404(self):
        # open answers 404 for e2e/onlyb; open2 has it
        self.pull("onlyb")

    def test_head_manifest_by_tag_and_digest(self):
        for key in ("dockerv2", "oci", "ociindex", "dockerlist"):
            img = self.env.images[key]
            self.check_head_manifest(self.zm.url, img, img.tag)
            self.check_head_manifest(self.zm.url, img, img.digest)

    def test_head_blob(self):
        img = self.env.images["dockerv2"]
        self.check_head_blob(self.zm.url, img, _layer(img))
        big = self.env.images["big"]
        self.check_head_blob(self.zm.url, big, big.largest_blob())

    def test_range_on_blob(self):
        img = self.env.images["oci"]
        self.check_range(self.zm.url, img, _layer(img), 1000, 50999)
        self.check_range(self.zm.url, img, _layer(img), 0, 0)
        big = self.env.images["big"]
        mid = 50 * MiB + 7
        self.check_range(self.zm.url, big, big.largest_blob(), mid, mid + 65535)

    def test_containerd_style_accept_and_ns_query(self):
        # containerd: one comma-joined Accept with */*, and ?ns=docker.io as a hosts.toml mirror
        img = self.env.images["dockerlist"]
        accept = f"{MT_DOCKER_MANIFEST}, {MT_DOCKER_LIST}, {MT_OCI_MANIFEST}, {MT_OCI_INDEX}, */*"
        r = http_request("HEAD", f"{self.zm.url}/v2/{img.repo}/manifests/{img.tag}?ns=docker.io",
                         [("Accept", accept)])
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.header("Docker-Content-Digest"), img.digest, r.describe())
        child = img.children[0]
        r = http_request("GET", f"{self.zm.url}/v2/{img.repo}/manifests/{child.digest}?ns=docker.io",
                         [("Accept", f"{child.media_type}, */*")])
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.body, child.manifest)

    def test_no_accept_header_is_not_down_converted(self):
        # without Accept, distribution would answer a docker v2 image as schema 1 and an OCI one with 404
        for key in ("dockerv2", "oci"):
            img = self.env.images[key]
            r = http_request("GET", f"{self.zm.url}/v2/{img.repo}/manifests/{img.tag}")
            self.assertEqual(r.status, 200, r.describe())
            self.assertEqual(r.header("Docker-Content-Digest"), img.digest, r.describe())
            self.assertEqual(r.body, img.manifest)

    def test_cache_control_headers(self):
        img = self.env.images["oci"]
        r = http_request("HEAD", f"{self.zm.url}/v2/{img.repo}/blobs/{_layer(img).digest}")
        self.assertEqual(r.header("Cache-Control"), "public, max-age=31536000, immutable", r.describe())
        r = http_request("HEAD", f"{self.zm.url}/v2/{img.repo}/manifests/{img.digest}", manifest_headers())
        self.assertEqual(r.header("Cache-Control"), "public, max-age=31536000, immutable", r.describe())
        r = http_request("HEAD", f"{self.zm.url}/v2/{img.repo}/manifests/{img.tag}", manifest_headers())
        self.assertEqual(r.header("Cache-Control"), "public, max-age=300", r.describe())

    def test_unknown_manifest_and_blob_are_404(self):
        r = http_request("GET", f"{self.zm.url}/v2/e2e/does-not-exist/manifests/1", manifest_headers())
        self.assertEqual(r.status, 404, r.describe())
        self.assertIn(r.json()["errors"][0]["code"], ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"), r.describe())
        self.assertEqual(r.header("Docker-Distribution-API-Version"), API_VERSION)
        img = self.env.images["oci"]
        r = http_request("GET", f"{self.zm.url}/v2/{img.repo}/blobs/sha256:{'0' * 64}")
        self.assertEqual(r.status, 404, r.describe())
        self.assertEqual(r.json()["errors"][0]["code"], "BLOB_UNKNOWN", r.describe())

    def test_tags_list(self):
        img = self.env.images["oci"]
        r = http_request("GET", f"{self.zm.url}/v2/{img.repo}/tags/list")
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.json(), {"name": img.repo, "tags": [img.tag]})


class TokenUpstreamTests(E2ECase):
    """zmirror ``token``: one upstream with Docker-Hub-style token auth, no credentials configured."""

    def test_anonymous_pull_through_token_upstream(self):
        zm = self.env.proxy("token")
        reg = self.env.registries["token"]
        self.copy(zm.host, "e2e/dockerv2:1", self.env.images["dockerv2"], logs=(zm.proc, reg.issuer))
        self.copy(zm.host, "e2e/ociindex:1", self.env.images["ociindex"], logs=(zm.proc, reg.issuer))
        issued = reg.issuer.log.read_text()
        self.assertIn("issued sub='' ", issued)
        self.assertIn('"name": "e2e/dockerv2", "actions": ["pull"]', issued)


class BasicUpstreamTests(E2ECase):
    """zmirror ``basic``: one htpasswd upstream, credentials in the registries row; clients anonymous."""

    def test_pull_with_configured_credentials(self):
        zm = self.env.proxy("basic")
        self.copy(zm.host, "e2e/oci:1", self.env.images["oci"], logs=(zm.proc,))
        self.copy(zm.host, "library/e2elist:1", self.env.images["dockerlist"], logs=(zm.proc,))
        img = self.env.images["oci"]
        self.check_head_blob(zm.url, img, _layer(img))

    def test_upstream_password_not_logged(self):
        zm = self.env.proxy("basic")
        http_request("GET", f"{zm.url}/v2/e2e/oci/manifests/1", manifest_headers())
        self.assertNotIn(H.PASSWORD, zm.proc.log.read_text(errors="replace"))
