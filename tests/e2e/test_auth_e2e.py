"""Access control end to end: real skopeo, podman, docker (our own dockerd) and ctr (our own
containerd) pull through ``twistd zmirror`` in ``[access] anonymous = "whitelist"`` mode
(the zmirror, its whitelist and users, and the client daemons: :mod:`tests.e2e.authcase`).

Each client's tests skip with a clear message when its binaries are missing or when not running
as root (``scripts/system-deps.sh`` installs the Debian packages).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

from tests.e2e import harness as H
from tests.e2e.authcase import AUTH_ERRORS, USERS, WRONG_PASSWORD, AuthE2ECase, containerd, dockerd, podman
from tests.e2e.clients import CTR_SKIP, DOCKER_SKIP, PODMAN_SKIP, SkopeoError, client_env, output, run, skopeo_copy
from tests.e2e.httpclient import http_request, manifest_headers
from tests.e2e.images import Image, dir_problems, sha256_hex

SKIP = H.missing_tools()

class SkopeoAuthTests(AuthE2ECase):
    """skopeo: anonymous on whitelisted/private repositories, --src-creds, skopeo login."""

    def copy_ok(self, image: Image, ref: str | None = None, creds: str | None = None) -> None:
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, ref or image.ref, dest, creds=creds, timeout=180)
        except SkopeoError as e:
            self.fail(f"skopeo copy {ref or image.ref} (creds: {bool(creds)}) failed: {e}{self.diag()}")
        self.assertEqual(dir_problems(dest, image), [], f"{ref or image.ref}: wrong digests")

    def copy_refused(self, ref: str, creds: str | None = None) -> str:
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, ref, dest, creds=creds, timeout=180)
        except SkopeoError as e:
            return e.stderr
        self.fail(f"skopeo copy {ref} (creds: {creds and creds.split(':')[0]}) was allowed")

    def test_anonymous_pull_of_whitelisted_images(self):
        self.copy_ok(self.images["oci"])  # entry e2e/oci
        # entry "e2elist" allows library/e2elist; pulled by the short name, zmirror normalizes it
        self.copy_ok(self.images["dockerlist"], ref="e2elist:1")
        self.copy_ok(self.images["dockerlist"])

    def test_anonymous_pull_of_private_images_fails_with_auth_error(self):
        for key in ("dockerv2", "ociindex"):  # e2e/ociindex: entry e2e/oci ends at a component boundary
            err = self.copy_refused(self.images[key].ref)
            self.assertAuthError(err, f"anonymous skopeo copy of {self.images[key].ref}")

    def test_user_credentials_pull_private_images(self):
        self.copy_ok(self.images["ociindex"], creds=self.creds("alice"))  # index and both children
        self.copy_ok(self.images["dockerv2"], creds=self.creds("alice"))

    def test_wrong_password_is_refused(self):
        err = self.copy_refused(self.images["dockerv2"].ref, creds=self.creds("alice", WRONG_PASSWORD))
        self.assertAuthError(err, "skopeo copy with a wrong password")
        # bad credentials are never downgraded to anonymous, not even for a whitelisted repository
        err = self.copy_refused(self.images["oci"].ref, creds=self.creds("alice", WRONG_PASSWORD))
        self.assertAuthError(err, "skopeo copy of a whitelisted image with a wrong password")

    def test_config_admin_is_not_a_registry_user(self):
        err = self.copy_refused(self.images["dockerv2"].ref, creds=self.admin_creds())
        self.assertAuthError(err, "skopeo copy with the config.toml admin's credentials")

    def login(self, user: str, password: str) -> tuple[subprocess.CompletedProcess, Path]:
        authfile = self.workdir() / "auth.json"
        p = run(["skopeo", "login", "--tls-verify=false", "--authfile", authfile, "-u", user, "--password-stdin",
                 self.zm.host], input=password + "\n", timeout=60, env=client_env())
        return p, authfile

    def test_login_with_user_succeeds(self):
        p, authfile = self.login("alice", USERS["alice"])
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        self.assertIn("Login Succeeded", p.stdout)
        self.assertIn(self.zm.host, json.loads(authfile.read_text())["auths"])
        # the stored credentials work for a private image
        img = self.images["dockerv2"]
        r = run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--authfile", authfile,
                 f"docker://{self.zm.host}/{img.ref}"], timeout=60, env=client_env())
        self.assertEqual(r.returncode, 0, output(r) + self.diag())
        self.assertEqual("sha256:" + sha256_hex(r.stdout.encode()), img.digest)

    def test_login_with_admin_fails(self):
        user, password = self.zm.admin_credentials()
        p, authfile = self.login(user, password)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "skopeo login as the config.toml admin")
        self.assertFalse(authfile.exists() and self.zm.host in authfile.read_text(), "admin credentials stored")

    def test_login_with_wrong_password_fails(self):
        p, _ = self.login("alice", WRONG_PASSWORD)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "skopeo login with a wrong password")


class HTTPAuthTests(AuthE2ECase):
    """What the clients above rely on, checked on the wire."""

    def test_challenges_and_cache_control(self):
        zm, private, public = self.zm, self.images["dockerv2"], self.images["oci"]
        r = http_request("GET", f"{zm.url}/v2/")
        self.assertEqual(r.status, 401, r.describe())
        self.assertEqual(r.header("WWW-Authenticate"),
                         f'Bearer realm="{zm.url}/token",service="zmirror"', r.describe())
        # containerd: the challenge on HEAD, with the scope
        r = http_request("HEAD", f"{zm.url}/v2/{private.repo}/manifests/{private.tag}", manifest_headers())
        self.assertEqual(r.status, 401, r.describe())
        self.assertIn(f'scope="repository:{private.repo}:pull"', r.header("WWW-Authenticate") or "")
        basic = "Basic " + base64.b64encode(self.creds("alice").encode()).decode()
        r = http_request("GET", f"{zm.url}/v2/{private.repo}/manifests/{private.tag}",
                         manifest_headers() + [("Authorization", basic)])
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.body, private.manifest)
        self.assertIn("private", (r.header("Cache-Control") or "").lower(), r.describe())
        r = http_request("GET", f"{zm.url}/v2/{public.repo}/manifests/{public.tag}", manifest_headers())
        self.assertEqual(r.status, 200, r.describe())
        self.assertNotIn("private", (r.header("Cache-Control") or "").lower(), r.describe())


class PodmanAuthTests(AuthE2ECase):
    """podman login (user: yes, admin: no) and a pull of a private image after login."""

    skip = SKIP or PODMAN_SKIP

    def setUp(self):
        super().setUp()
        self.podman = podman()
        self.authfile = self.workdir() / "auth.json"
        self.authfile.write_text('{"auths": {}}\n')

    def login(self, user: str, password: str) -> subprocess.CompletedProcess:
        return self.podman("login", "--tls-verify=false", "--authfile", self.authfile, "-u", user,
                           "--password-stdin", self.zm.host, input=password + "\n", timeout=60)

    def test_login_then_pull_private_image(self):
        p = self.login("alice", USERS["alice"])
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        self.assertIn("Login Succeeded", p.stdout)
        img = self.images["dockerv2"]
        ref = f"{self.zm.host}/{img.ref}"
        p = self.podman("pull", "--tls-verify=false", "--authfile", self.authfile, ref)
        self.addCleanup(lambda: self.podman("rmi", "-f", ref, timeout=60))
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        p = self.podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref, timeout=60)
        self.assertEqual(p.returncode, 0, output(p))
        self.assertIn(f"{self.zm.host}/{img.repo}@{img.digest}", json.loads(p.stdout))

    def test_login_with_admin_fails(self):
        user, password = self.zm.admin_credentials()
        p = self.login(user, password)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "podman login as the config.toml admin")
        self.assertNotIn(self.zm.host, self.authfile.read_text())

    def test_pull_of_private_image_without_login_fails(self):
        img = self.images["ociindex"]
        p = self.podman("pull", "--tls-verify=false", "--authfile", self.authfile, f"{self.zm.host}/{img.ref}")
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "anonymous podman pull of a private image")


class DockerAuthTests(AuthE2ECase):
    """docker login (refresh-token flow) and docker pull through a dockerd of our own."""

    skip = SKIP or DOCKER_SKIP

    def setUp(self):
        super().setUp()
        self.docker = dockerd(self.zm)

    def config(self) -> Path:
        d = self.workdir() / "docker-config"
        d.mkdir()
        (d / "config.json").write_text('{"auths": {}}\n')
        return d

    def pull(self, config: Path, image: Image) -> subprocess.CompletedProcess:
        ref = f"{self.zm.host}/{image.ref}"
        p = self.docker.cli(config, "pull", ref)
        if p.returncode == 0:
            self.addCleanup(lambda: self.docker.cli(config, "rmi", "-f", ref, timeout=60))
        return p

    def assertPulled(self, p: subprocess.CompletedProcess, image: Image) -> None:
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.docker))
        self.assertIn(f"Digest: {image.digest}", p.stdout, output(p))

    def test_login_pull_with_refresh_token_until_user_disabled(self):
        cfg = self.config()
        t0 = time.time() - 1
        p = self.docker.cli(cfg, "login", "-u", "dora", "--password-stdin", self.zm.host,
                            input=USERS["dora"] + "\n", timeout=60)
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.docker))
        self.assertIn("Login Succeeded", p.stdout)
        # docker keeps the refresh token (identitytoken), not the password
        stored = (cfg / "config.json").read_text()
        entry = json.loads(stored)["auths"].get(self.zm.host) or {}
        self.assertTrue(entry.get("identitytoken"), f"no identitytoken stored: {stored}")
        self.assertNotIn(USERS["dora"], stored)
        self.assertNotIn(base64.b64encode(self.creds("dora").encode()).decode(), stored)
        self.wait_log("docker login (GET /token with Basic, offline_token)",
                      lambda r: r["username"] == "dora" and r["method"] == "GET" and r["status"] == 200
                      and r["created_at"] >= t0, kind="token")

        img = self.images["dockerv2"]
        t1 = time.time() - 1
        self.assertPulled(self.pull(cfg, img), img)
        self.wait_log("the pull's POST /token grant_type=refresh_token",
                      lambda r: r["username"] == "dora" and r["method"] == "POST" and r["status"] == 200
                      and r["created_at"] >= t1, kind="token")
        self.wait_log("the private manifest pulled as dora",
                      lambda r: r["username"] == "dora" and r["repository"] == img.repo and r["status"] == 200
                      and r["created_at"] >= t1, kind="manifest")

        uid = self.user_id("dora")
        self.zm.set_user_enabled(uid, False)
        self.addCleanup(self.zm.set_user_enabled, uid, True)
        t2 = time.time() - 1
        other = self.images["ociindex"]
        p = self.pull(cfg, other)
        self.assertNotEqual(p.returncode, 0, f"pull with a disabled user's refresh token worked: {output(p)}")
        self.assertAuthError(p.stdout + p.stderr, "docker pull after the user was disabled")
        self.wait_log("the refused refresh (POST /token → 401)",
                      lambda r: r["method"] == "POST" and r["status"] == 401 and r["created_at"] >= t2,
                      kind="token")

    def test_login_with_admin_fails(self):
        cfg = self.config()
        user, password = self.zm.admin_credentials()
        p = self.docker.cli(cfg, "login", "-u", user, "--password-stdin", self.zm.host, input=password + "\n",
                            timeout=60)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "docker login as the config.toml admin")
        self.assertNotIn(self.zm.host, (cfg / "config.json").read_text())

    def test_anonymous_pull_whitelisted_yes_private_no(self):
        cfg = self.config()
        img = self.images["oci"]
        self.assertPulled(self.pull(cfg, img), img)
        p = self.pull(cfg, self.images["ociindex"])
        self.assertNotEqual(p.returncode, 0, output(p))
        # dockerd words a 401 on a repository as "pull access denied ... may require 'docker login'"
        low = (p.stdout + p.stderr).lower()
        self.assertTrue("docker login" in low or any(m in low for m in AUTH_ERRORS), output(p))


class ContainerdAuthTests(AuthE2ECase):
    """ctr images pull through a containerd of our own: --user (POST /token password grant), anonymous."""

    skip = SKIP or CTR_SKIP

    def setUp(self):
        super().setUp()
        self.containerd = containerd()

    def pull(self, image: Image, user: str | None = None) -> tuple[subprocess.CompletedProcess, str]:
        ref = f"{self.zm.host}/{image.ref}"
        args = ["images", "pull", "--plain-http", "--snapshotter", "native"]
        if user:
            args += ["--user", user]
        p = self.containerd.ctr(*args, ref)
        if p.returncode == 0:
            self.addCleanup(lambda: self.containerd.ctr("images", "rm", "--sync", ref, timeout=60))
        return p, ref

    def digest(self, ref: str) -> str | None:
        p = self.containerd.ctr("images", "ls", timeout=30)
        self.assertEqual(p.returncode, 0, output(p))
        for line in p.stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        return None

    def test_user_pull_of_private_image(self):
        img = self.images["ociindex"]
        t0 = time.time() - 1
        p, ref = self.pull(img, user=self.creds("carl"))
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.containerd))
        self.assertEqual(self.digest(ref), img.digest)
        # no ping: the challenge came on the HEAD, then a password grant
        self.wait_log("containerd's HEAD answered 401 with the challenge",
                      lambda r: r["method"] == "HEAD" and r["status"] == 401 and r["repository"] == img.repo
                      and r["created_at"] >= t0)
        self.wait_log("ctr --user: POST /token grant_type=password",
                      lambda r: r["username"] == "carl" and r["method"] == "POST" and r["status"] == 200
                      and r["created_at"] >= t0, kind="token")

    def test_anonymous_pull_of_private_image_fails(self):
        p, _ = self.pull(self.images["dockerv2"])
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stdout + p.stderr, "anonymous ctr pull of a private image")

    def test_anonymous_pull_of_whitelisted_image(self):
        img = self.images["oci"]
        p, ref = self.pull(img)
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.containerd))
        self.assertEqual(self.digest(ref), img.digest)
