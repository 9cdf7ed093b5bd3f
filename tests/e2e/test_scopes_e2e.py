"""Per-user scopes end to end: a registry user scoped to ``e2e/docker*`` pulls through
``twistd zmirror`` (whitelist mode, :mod:`tests.e2e.authcase`) from a real docker-registry with
skopeo, podman, docker (login: the refresh-token grant) and containerd's ctr (the password
grant), and is refused ``e2e/ociindex`` (private, not whitelisted, outside the scope) with an
authentication error; the upstream's access log shows no request for the refused repository
(the proxy decides before any upstream request).
"""

from __future__ import annotations

import base64
import json
import time

from tests.e2e.authcase import AUTH_ERRORS, AuthE2ECase, containerd, dockerd, podman
from tests.e2e.clients import CTR_SKIP, DOCKER_SKIP, PODMAN_SKIP, SkopeoError, output, skopeo_copy
from tests.e2e.httpclient import http_request, manifest_headers
from tests.e2e.images import dir_problems

SCOPED = "sam"
PASSWORD = "sam-pw-5Tg3"
SCOPES = ["docker.io/e2e/docker*"]


class ScopedUserCase(AuthE2ECase):
    def setUp(self):
        super().setUp()
        r = self.zm.api("GET", "/users")
        self.assertEqual(r.status, 200, r.describe())
        if not any(u["username"] == SCOPED for u in r.json()["items"]):
            r = self.zm.api("POST", "/users", {"username": SCOPED, "password": PASSWORD,
                                               "scopes": SCOPES})
            self.assertEqual(r.status, 201, r.describe())
            self.assertEqual(r.json()["scopes"], ["e2e/docker*"])
        self.allowed, self.refused = self.images["dockerv2"], self.images["ociindex"]
        self.upstream = self.env.registries["open"]
        self.offset = self.upstream.log_offset()

    def creds(self, user: str = SCOPED, password: str | None = None) -> str:
        if user == SCOPED:
            return f"{SCOPED}:{password or PASSWORD}"
        return super().creds(user, password)

    def upstream_lines(self, repo: str) -> list[str]:
        """Lines of the upstream's log since setUp that name ``repo`` (any method, any path)."""
        with open(self.upstream.proc.log, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if f"/v2/{repo}/" in line]

    def assertUpstreamNeverAsked(self, repo: str) -> None:
        # the allowed pull went upstream (no cache here): the log is the one to read
        deadline = time.monotonic() + 5
        while not self.upstream_lines(self.allowed.repo) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(self.upstream_lines(self.allowed.repo), "no upstream log line for the allowed pull")
        self.assertEqual(self.upstream_lines(repo), [], f"the upstream was asked for {repo}")

    def assertRefusedForScope(self, stderr: str, what: str) -> None:
        self.assertAuthError(stderr, what)
        self.assertIn("does not grant pull access", stderr, what)  # our message, not a login failure


class SkopeoScopeTests(ScopedUserCase):
    def test_pulls_inside_the_scope_and_is_refused_outside(self):
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, self.allowed.ref, dest, creds=self.creds(), timeout=180)
        except SkopeoError as e:
            self.fail(f"skopeo copy {self.allowed.ref} as {SCOPED} failed: {e}{self.diag()}")
        self.assertEqual(dir_problems(dest, self.allowed), [])
        try:
            skopeo_copy(self.zm.host, self.refused.ref, self.workdir() / "refused",
                        creds=self.creds(), timeout=180)
        except SkopeoError as e:
            self.assertRefusedForScope(e.stderr, f"skopeo copy {self.refused.ref} as {SCOPED}")
        else:
            self.fail(f"skopeo copy {self.refused.ref} as {SCOPED} was allowed")
        # the same user's token grant says why, as distribution's would
        token = self.token([f"repository:{self.allowed.repo}:pull", f"repository:{self.refused.repo}:pull"])
        self.assertEqual(token, {self.allowed.repo: ["pull"], self.refused.repo: []})
        self.assertUpstreamNeverAsked(self.refused.repo)

    def test_basic_auth_on_v2_is_held_to_the_scope(self):
        basic = "Basic " + base64.b64encode(self.creds().encode()).decode()
        url = f"{self.zm.url}/v2/{self.refused.repo}/manifests/{self.refused.tag}"
        r = http_request("GET", url, manifest_headers() + [("Authorization", basic)])
        self.assertEqual(r.status, 401, r.describe())
        challenge = r.header("WWW-Authenticate") or ""
        self.assertIn('error="insufficient_scope"', challenge, r.describe())
        self.assertIn(f'scope="repository:{self.refused.repo}:pull"', challenge)
        r = http_request("GET", f"{self.zm.url}/v2/{self.allowed.repo}/manifests/{self.allowed.tag}",
                         manifest_headers() + [("Authorization", basic)])
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.body, self.allowed.manifest)
        self.assertUpstreamNeverAsked(self.refused.repo)

    def token(self, scopes: list[str]) -> dict:
        basic = "Basic " + base64.b64encode(self.creds().encode()).decode()
        query = "&".join(f"scope={s}" for s in scopes)
        r = http_request("GET", f"{self.zm.url}/token?service=zmirror&{query}", [("Authorization", basic)])
        self.assertEqual(r.status, 200, r.describe())
        payload = r.json()["token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {a["name"]: a["actions"] for a in claims["access"]}


class PodmanScopeTests(ScopedUserCase):
    skip = AuthE2ECase.skip or PODMAN_SKIP

    def test_login_pull_inside_the_scope_refused_outside(self):
        pm = podman()
        authfile = self.workdir() / "auth.json"
        authfile.write_text('{"auths": {}}\n')
        p = pm("login", "--tls-verify=false", "--authfile", authfile, "-u", SCOPED, "--password-stdin",
               self.zm.host, input=PASSWORD + "\n", timeout=60)
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        ok = f"{self.zm.host}/{self.allowed.ref}"
        p = pm("pull", "--tls-verify=false", "--authfile", authfile, ok)
        self.addCleanup(lambda: pm("rmi", "-f", ok, timeout=60))
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        p = pm("pull", "--tls-verify=false", "--authfile", authfile, f"{self.zm.host}/{self.refused.ref}")
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertRefusedForScope(p.stderr, f"podman pull {self.refused.ref} as {SCOPED}")
        self.assertUpstreamNeverAsked(self.refused.repo)


class DockerScopeTests(ScopedUserCase):
    skip = AuthE2ECase.skip or DOCKER_SKIP

    def test_login_pull_inside_the_scope_refused_outside(self):
        docker = dockerd(self.zm)
        cfg = self.workdir() / "docker-config"
        cfg.mkdir()
        (cfg / "config.json").write_text('{"auths": {}}\n')
        p = docker.cli(cfg, "login", "-u", SCOPED, "--password-stdin", self.zm.host, input=PASSWORD + "\n",
                       timeout=60)
        self.assertEqual(p.returncode, 0, output(p) + self.diag(docker))
        ok = f"{self.zm.host}/{self.allowed.ref}"
        p = docker.cli(cfg, "pull", ok)
        self.addCleanup(lambda: docker.cli(cfg, "rmi", "-f", ok, timeout=60))
        self.assertEqual(p.returncode, 0, output(p) + self.diag(docker))
        self.assertIn(f"Digest: {self.allowed.digest}", p.stdout, output(p))
        p = docker.cli(cfg, "pull", f"{self.zm.host}/{self.refused.ref}")
        self.assertNotEqual(p.returncode, 0, output(p))
        # dockerd words a 401 on a repository as "pull access denied ... may require 'docker login'"
        low = (p.stdout + p.stderr).lower()
        self.assertTrue("pull access denied" in low or any(m in low for m in AUTH_ERRORS), output(p))
        self.assertUpstreamNeverAsked(self.refused.repo)


class ContainerdScopeTests(ScopedUserCase):
    skip = AuthE2ECase.skip or CTR_SKIP

    def test_pull_inside_the_scope_refused_outside(self):
        ctrd = containerd()
        args = ["images", "pull", "--plain-http", "--snapshotter", "native", "--user", self.creds()]
        ok = f"{self.zm.host}/{self.allowed.ref}"
        p = ctrd.ctr(*args, ok)
        self.addCleanup(lambda: ctrd.ctr("images", "rm", "--sync", ok, timeout=60))
        self.assertEqual(p.returncode, 0, output(p) + self.diag(ctrd))
        p = ctrd.ctr(*args, f"{self.zm.host}/{self.refused.ref}")
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stdout + p.stderr, f"ctr pull {self.refused.ref} as {SCOPED}")
        self.assertUpstreamNeverAsked(self.refused.repo)
