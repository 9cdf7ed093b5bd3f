"""End-to-end harness: real registries, deterministic test images, ``twistd zmirror``, skopeo.

Everything listens on 127.0.0.1 on free ports and lives in one temporary
directory, removed by :meth:`Harness.stop` (``ZMIRROR_E2E_KEEP=1`` keeps it).
Child processes get ``PR_SET_PDEATHSIG`` (``setpriv``) so they die with the test process even
when it is killed.

Pieces:

- :func:`build_images` writes the test images as skopeo ``dir:`` layouts with
  manifests serialized by us (indented JSON, so a proxy that re-serializes a
  manifest changes its digest): a docker v2 schema 2 image, an OCI image, an OCI
  index and a docker manifest list (linux/amd64 + linux/arm64/v8 children), and
  a big OCI image whose first layer holds ``big_mib`` MiB of seeded random data
  (streamed to disk, gzip level 0, never held in memory).
- :class:`Harness` starts Debian's ``docker-registry`` (distribution 2.8) in three
  flavours: open (storage redirects disabled), Docker-Hub-style token auth with
  our own issuer (``python harness.py issuer``: ES256 JWT, ``x5c`` header,
  PyJWT + cryptography) and htpasswd basic auth (bcrypt); pushes images with
  ``skopeo copy --preserve-digests``; starts ``twistd -n zmirror`` with a data
  dir whose SQLite ``registries`` table lists the upstreams under test.
- :class:`E2EEnvironment` is the standard set the suite shares; get it with
  :func:`shared` (built once per process, stopped at exit).
- :func:`skopeo_copy`, :func:`skopeo_inspect_raw`, :func:`http_request`,
  :func:`http_stream` (big bodies, hashed as read) and :func:`dir_problems` are
  the client-side helpers.
- For cache tests: :meth:`E2EEnvironment.extra_open` (a registry of one's own
  holding some of the built images), :meth:`Harness.stop_registry` /
  :meth:`Harness.resume_registry` (same port and storage),
  :meth:`Harness.restart_zmirror` (clean or SIGKILL, same data dir and port),
  :meth:`Registry.requests` (count upstream requests in its access log) and
  :class:`ThrottledProxy` (pace an upstream to keep a download in flight).

``python tests/e2e/harness.py up`` starts the standard environment plus the
main zmirror instance and prints the addresses (handy for
``clients-e2e.sh``-style manual runs); Ctrl-C stops it.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import hashlib
import http.client
import io
import json
import os
import random
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
MiB = 1024 * 1024

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# What skopeo sends (as separate header lines), minus schema 1.
MANIFEST_ACCEPT = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_DOCKER_LIST, MT_OCI_INDEX)

CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200
USER, PASSWORD = "e2e-user", "e2e-pass-7Qx"
TOKEN_SERVICE, TOKEN_ISSUER = "zmirror-e2e-registry", "zmirror-e2e-issuer"
DEFAULT_BIG_MIB = int(os.environ.get("ZMIRROR_E2E_BIG_MIB", "100"))


class HarnessError(Exception):
    pass


def missing_tools() -> str | None:
    """Why the e2e tests cannot run here, or None."""
    missing = [t for t in ("docker-registry", "skopeo") if not shutil.which(t)]
    if missing:
        return (f"{' and '.join(missing)} not installed (Debian: apt-get install docker-registry skopeo, "
                f"or run scripts/system-deps.sh as root): end-to-end tests skipped")
    try:
        import bcrypt  # noqa: F401
        import cryptography  # noqa: F401
        import jwt  # noqa: F401
    except ImportError as e:
        return f"python package missing for the e2e upstreams ({e}): pip install -e '.[test]'"
    return None


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(MiB)
            if not chunk:
                return "sha256:" + h.hexdigest()
            h.update(chunk)


# --------------------------------------------------------------------------- images


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str
    path: Path

    def read(self, start: int = 0, length: int | None = None) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(self.size - start if length is None else length)


@dataclass
class Image:
    """One image or list as built here; ``dir`` is a skopeo ``dir:`` layout."""

    key: str
    repo: str
    tag: str
    media_type: str
    manifest: bytes
    dir: Path
    blobs: list[Blob] = field(default_factory=list)  # config + layers (own; a list has none)
    children: list[Image] = field(default_factory=list)
    platform: dict | None = None

    @property
    def digest(self) -> str:
        return "sha256:" + sha256_hex(self.manifest)

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"

    def all_manifests(self) -> dict[str, bytes]:
        out = {self.digest: self.manifest}
        for c in self.children:
            out.update(c.all_manifests())
        return out

    def all_blobs(self) -> dict[str, Blob]:
        out = {b.digest: b for b in self.blobs}
        for c in self.children:
            out.update(c.all_blobs())
        return out

    def largest_blob(self) -> Blob:
        return max(self.all_blobs().values(), key=lambda b: b.size)


def _manifest_bytes(obj: dict) -> bytes:
    # Indented on purpose: any re-serialization by a proxy changes the digest.
    return (json.dumps(obj, indent=3) + "\n").encode()


def _gzip_chunks(chunks: Iterable[bytes], level: int) -> Iterator[tuple[bytes, bytes]]:
    """Yields ``(raw_chunk, compressed_chunk)``; gzip header with mtime 0 (deterministic)."""
    co = zlib.compressobj(level, zlib.DEFLATED, 31)
    for c in chunks:
        yield c, co.compress(c)
    yield b"", co.flush()


class DirLayout:
    """Writes a skopeo ``dir:`` layout (transport version 1.1)."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        (path / "version").write_text("Directory Transport Version: 1.1\n")

    def put(self, data: bytes, media_type: str) -> Blob:
        digest = "sha256:" + sha256_hex(data)
        p = self.path / digest.split(":", 1)[1]
        if not p.exists():
            p.write_bytes(data)
        return Blob(digest, len(data), media_type, p)

    def put_layer(self, tar_chunks: Iterable[bytes], media_type: str, level: int = 6) -> tuple[Blob, str]:
        """Streams an uncompressed tar through gzip to disk; returns the blob and the diff_id."""
        tmp = self.path / (".tmp-" + secrets.token_hex(4))
        raw_h, gz_h, size = hashlib.sha256(), hashlib.sha256(), 0
        with open(tmp, "wb") as f:
            for raw, comp in _gzip_chunks(tar_chunks, level):
                raw_h.update(raw)
                if comp:
                    gz_h.update(comp)
                    f.write(comp)
                    size += len(comp)
        digest = "sha256:" + gz_h.hexdigest()
        final = self.path / gz_h.hexdigest()
        os.replace(tmp, final)
        return Blob(digest, size, media_type, final), "sha256:" + raw_h.hexdigest()

    def put_manifest(self, data: bytes, top: bool) -> None:
        name = "manifest.json" if top else sha256_hex(data) + ".manifest.json"
        (self.path / name).write_bytes(data)


def _tar_small(files: dict[str, bytes]) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        dirs = sorted({n.rsplit("/", 1)[0] for n in files if "/" in n})
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime, ti.uname, ti.gname = tarfile.DIRTYPE, 0o755, MTIME, "root", "root"
            tf.addfile(ti)
        for name in sorted(files):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = len(files[name]), 0o644, MTIME, "root", "root"
            tf.addfile(ti, io.BytesIO(files[name]))
    return bio.getvalue()


def _tar_big(name: str, size: int, seed: int, chunk: int = MiB) -> Iterator[bytes]:
    """A tar with one file of ``size`` seeded random bytes, generated in chunks."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = size, 0o644, MTIME, "root", "root"
    yield ti.tobuf(format=tarfile.USTAR_FORMAT)
    rnd = random.Random(seed)
    left = size
    while left:
        n = min(chunk, left)
        yield rnd.randbytes(n)
        left -= n
    yield b"\0" * ((-size) % 512) + b"\0" * 1024


def _image(lay: DirLayout, key: str, layers: list[tuple[Iterable[bytes], int]], *, oci: bool, arch: str = "amd64",
           variant: str | None = None, top: bool = True, repo: str = "", tag: str = "") -> Image:
    layer_mt = MT_OCI_LAYER if oci else MT_DOCKER_LAYER
    blobs, diff_ids = [], []
    for chunks, level in layers:
        blob, diff_id = lay.put_layer(chunks, layer_mt, level)
        blobs.append(blob)
        diff_ids.append(diff_id)
    cfg = {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"], "Labels": {"zmirror.e2e": key}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"zmirror e2e {key} layer {i}"} for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    config = lay.put(_manifest_bytes(cfg), MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG)
    man = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs],
    }
    data = _manifest_bytes(man)
    lay.put_manifest(data, top)
    plat = {"architecture": arch, "os": "linux"}
    if variant:
        plat["variant"] = variant
    return Image(key, repo, tag, man["mediaType"], data, lay.path, [config] + blobs, platform=plat)


def _list(lay: DirLayout, key: str, repo: str, tag: str, children: list[Image], *, oci: bool) -> Image:
    mt = MT_OCI_INDEX if oci else MT_DOCKER_LIST
    obj = {
        "schemaVersion": 2,
        "mediaType": mt,
        "manifests": [
            {"mediaType": c.media_type, "digest": c.digest, "size": len(c.manifest), "platform": c.platform}
            for c in children
        ],
    }
    data = _manifest_bytes(obj)
    lay.put_manifest(data, True)
    return Image(key, repo, tag, mt, data, lay.path, [], children)


def _small_layers(key: str, arch: str, seed: int) -> list[tuple[Iterable[bytes], int]]:
    rnd = random.Random(seed)
    base = _tar_small({
        "etc/os-release": f"NAME=zmirror-e2e\nID={key}\nARCH={arch}\n".encode(),
        "opt/e2e/random.bin": rnd.randbytes(96 * 1024),  # incompressible: Range tests have bytes to check
    })
    top = _tar_small({"hello.txt": f"hello from {key} ({arch})\n".encode()})
    return [([base], 6), ([top], 6)]


def build_images(root: Path, big_mib: int = DEFAULT_BIG_MIB, with_big: bool = True) -> dict[str, Image]:
    """Builds every test image under ``root`` (once: a second call reuses nothing, so cache the result)."""
    images: dict[str, Image] = {}
    images["dockerv2"] = _image(DirLayout(root / "dockerv2"), "dockerv2", _small_layers("dockerv2", "amd64", 1),
                                oci=False, repo="e2e/dockerv2", tag="1")
    images["oci"] = _image(DirLayout(root / "oci"), "oci", _small_layers("oci", "amd64", 2),
                           oci=True, repo="e2e/oci", tag="1")
    images["onlyb"] = _image(DirLayout(root / "onlyb"), "onlyb", _small_layers("onlyb", "amd64", 3),
                             oci=True, repo="e2e/onlyb", tag="1")
    for key, oci, repo, seed in (("ociindex", True, "e2e/ociindex", 10), ("dockerlist", False, "library/e2elist", 20)):
        lay = DirLayout(root / key)
        kids = [
            _image(lay, f"{key}-amd64", _small_layers(key, "amd64", seed), oci=oci, top=False),
            _image(lay, f"{key}-arm64", _small_layers(key, "arm64", seed + 1), oci=oci, arch="arm64",
                   variant="v8", top=False),
        ]
        images[key] = _list(lay, key, repo, "1", kids, oci=oci)
    if with_big:
        images["big"] = build_big_image(root / f"big-{big_mib}", big_mib)
    return images


def build_big_image(path: Path, mib: int, repo: str = "e2e/big", tag: str = "1", seed: int = 4242) -> Image:
    """An OCI image whose first layer is ``mib`` MiB of seeded random data (gzip level 0: no CPU burnt);
    another ``seed`` gives another layer."""
    lay = DirLayout(path)
    layers = [
        (_tar_big("data/random.bin", mib * MiB, seed=seed), 0),
        ([_tar_small({"big.txt": f"{mib} MiB of random data\n".encode()})], 6),
    ]
    return _image(lay, "big", layers, oci=True, repo=repo, tag=tag)


# --------------------------------------------------------------------------- token issuer


def make_token_keys(keydir: Path) -> Path:
    """CA + ES256 signer (cert without EKU, as distribution verifies the x5c chain); returns the bundle path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    keydir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def cert(cn, pub, issuer_cn, signing_key, ca):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
             .public_key(pub).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False,
                                              encipher_only=False, decipher_only=False), critical=True)
        return b.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("zmirror e2e token CA", ca_key.public_key(), "zmirror e2e token CA", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert("zmirror e2e token signer", key.public_key(), "zmirror e2e token CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (keydir / "signer.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (keydir / "signer.pem").write_bytes(leaf.public_bytes(pem))
    bundle = keydir / "bundle.pem"
    bundle.write_bytes(ca.public_bytes(pem) + leaf.public_bytes(pem))
    return bundle


def issuer_main(argv: list[str]) -> None:
    """``harness.py issuer --port P --keydir D --user U:P``: a Docker-Hub-style token endpoint.

    GET /token (anonymous or Basic) and POST /token (grant_type=password).  Anonymous
    callers get ``pull`` only; the configured user gets what it asks for; bad
    credentials → 401.  Every issued token is logged as one ``issued`` line.
    """
    import argparse
    import hmac
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ap = argparse.ArgumentParser(prog="harness.py issuer")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--keydir", required=True)
    ap.add_argument("--user", default=f"{USER}:{PASSWORD}")
    ap.add_argument("--ttl", type=int, default=300)
    a = ap.parse_args(argv)
    keydir = Path(a.keydir)
    key = serialization.load_pem_private_key((keydir / "signer.key").read_bytes(), None)
    leaf = x509.load_pem_x509_certificate((keydir / "signer.pem").read_bytes())
    x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
    user, password = a.user.split(":", 1)

    def access_for(scopes: list[str], authed: bool) -> list[dict]:
        out = []
        for sc in scopes:
            for one in sc.split(" "):
                parts = one.split(":")
                if len(parts) < 3:
                    continue
                typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
                acts = [x for x in actions if x and (authed or x == "pull")]
                out.append({"type": typ, "name": name, "actions": acts})
        return out

    def issue(sub: str, service: str, scopes: list[str]) -> dict:
        now = int(time.time())
        access = access_for(scopes, bool(sub))
        claims = {"iss": TOKEN_ISSUER, "sub": sub, "aud": service, "exp": now + a.ttl, "nbf": now - 5,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        tok = jwt.encode(claims, key, algorithm="ES256", headers={"x5c": x5c})
        print(f"issued sub={sub!r} service={service!r} access={json.dumps(access)}", flush=True)
        return {"token": tok, "access_token": tok, "expires_in": a.ttl,
                "issued_at": datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def check(u: str, p: str) -> bool:
        return hmac.compare_digest(u.encode(), user.encode()) & hmac.compare_digest(p.encode(), password.encode())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            print(fmt % args, flush=True)

        def send(self, code: int, obj: dict, extra: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            u = urllib.parse.urlsplit(self.path)
            if u.path != "/token":
                return self.send(404, {"error": "not found"})
            q = urllib.parse.parse_qs(u.query)
            sub = ""
            h = self.headers.get("Authorization", "")
            if h.lower().startswith("basic "):
                try:
                    bu, bp = base64.b64decode(h[6:]).decode().split(":", 1)
                except (ValueError, UnicodeDecodeError):
                    bu, bp = "", ""
                if not check(bu, bp):
                    return self.send(401, {"details": "incorrect username or password"},
                                     {"WWW-Authenticate": 'Basic realm="token"'})
                sub = bu
            print(f"GET /token sub={sub!r} scope={q.get('scope', [])}", flush=True)
            self.send(200, issue(sub, q.get("service", [""])[0], q.get("scope", [])))

        def do_POST(self):
            u = urllib.parse.urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            f = urllib.parse.parse_qs(self.rfile.read(n).decode())
            g = lambda k: f.get(k, [""])[0]
            if u.path != "/token":
                return self.send(404, {"error": "not found"})
            if g("grant_type") != "password":
                return self.send(400, {"error": "unsupported_grant_type"})
            if not check(g("username"), g("password")):
                return self.send(401, {"error": "invalid_grant"})
            scopes = g("scope").split(" ") if g("scope") else []
            self.send(200, issue(g("username"), g("service"), scopes))

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"token issuer on 127.0.0.1:{a.port}", flush=True)
    srv.serve_forever()


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"


# --------------------------------------------------------------------------- processes


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM``: the child dies with us even if we are SIGKILLed (no preexec_fn,
    which is unsafe while other threads run)."""
    return ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


def _env_without_registry_vars() -> dict:
    # distribution reads REGISTRY_* environment variables as configuration overrides
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        return _log_tail(self.log, n)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, argv: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        p = subprocess.Popen(_pdeathsig_prefix() + argv, stdin=subprocess.DEVNULL, stdout=f,
                             stderr=subprocess.STDOUT, env=env, cwd=str(cwd) if cwd else None)
    return Proc(name, p, log)


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Until ``url`` answers any HTTP status (401 included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise HarnessError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise HarnessError(f"{proc.name} not answering {url} after {timeout}s:\n{proc.tail()}")


@dataclass
class Registry:
    name: str
    kind: str  # open | token | basic
    port: int
    proc: Proc
    creds: tuple[str, str] | None = None  # needed to push (token, basic)
    issuer: Proc | None = None
    issuer_port: int | None = None
    storage: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def creds_arg(self) -> str | None:
        return f"{self.creds[0]}:{self.creds[1]}" if self.creds else None

    def log_offset(self) -> int:
        """The current size of the registry's log: pass it as ``since`` to :meth:`requests`."""
        try:
            return self.proc.log.stat().st_size
        except OSError:
            return 0

    def requests(self, method: str, path: str, since: int = 0) -> list[str]:
        """Access-log lines (``"GET /v2/... HTTP/1.1" 200 ...``, written when a response ends) of
        ``method`` on exactly ``path`` (query ignored), from byte ``since`` of the log on."""
        try:
            with open(self.proc.log, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            i = line.find(f'"{method} ')
            if i < 0 or ' - - [' not in line[:i]:
                continue  # not an access-log line (the structured "response completed" lines differ)
            target = line[i + len(method) + 2:].split(" ", 1)[0]
            if target.split("?", 1)[0] == path:
                out.append(line)
        return out


@dataclass
class Upstream:
    """One row of zmirror's ``registries`` table."""

    name: str
    url: str
    username: str = ""
    password: str = ""
    enabled: bool = True
    priority: int | None = None  # default: position in the list (1-based)
    namespace: str = "docker.io"  # the registry host it mirrors (registries.namespace, migration 0004)


@dataclass
class ZMirror:
    name: str
    port: int
    proc: Proc
    data: Path
    upstreams: list[Upstream]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def tail(self, n: int = 60) -> str:
        return self.proc.tail(n)

    # -- the admin API (Basic auth with the config.toml admin)

    def admin_credentials(self) -> tuple[str, str]:
        import toml

        conf = toml.loads((self.data / "config.toml").read_text())
        return conf["admin"]["username"], conf["admin"]["password"]

    def api(self, method: str, path: str, obj=None, timeout: float = 30) -> HTTPResult:
        """``METHOD /api{path}`` as the admin, with ``obj`` as the JSON body."""
        user, password = self.admin_credentials()
        return http_json(method, f"{self.url}/api{path}", obj, auth=(user, password), timeout=timeout)

    def _api_ok(self, method: str, path: str, obj=None) -> dict | None:
        r = self.api(method, path, obj)
        if r.status not in (200, 201, 204):
            raise HarnessError(f"{method} /api{path} {obj!r}: {r.describe()}")
        return r.json() if r.body else None

    def add_user(self, username: str, password: str, enabled: bool = True) -> dict:
        """Creates a registry user through ``POST /api/users``; returns the user row (with ``id``)."""
        return self._api_ok("POST", "/users", {"username": username, "password": password, "enabled": enabled})

    def set_user_enabled(self, uid: int, enabled: bool) -> dict:
        return self._api_ok("PUT", f"/users/{uid}", {"enabled": enabled})

    def add_whitelist(self, prefix: str, note: str = "") -> dict:
        return self._api_ok("POST", "/whitelists", {"prefix": prefix, "note": note})

    def access_logs(self, **query) -> list[dict]:
        """Rows of ``GET /api/logs`` (newest first); the access log is written in batches (~0.5 s)."""
        query.setdefault("page_size", 500)
        out = self._api_ok("GET", "/logs?" + urllib.parse.urlencode(query))
        return out["items"] if out else []


class Harness:
    """Starts and stops real registries and zmirror instances in one temp dir."""

    def __init__(self, root: Path | None = None, keep: bool | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="zmirror-e2e-")).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = os.environ.get("ZMIRROR_E2E_KEEP") == "1" if keep is None else keep
        self.procs: list[Proc] = []
        self.registries: dict[str, Registry] = {}
        self.zmirrors: dict[str, ZMirror] = {}
        self._stopped = False
        self._lock = threading.Lock()

    # -- registries

    def _registry_yaml(self, name: str, port: int, storage: Path, auth: str = "", redirect: bool = False) -> Path:
        text = f"""version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: {name}
storage:
  filesystem:
    rootdirectory: {json.dumps(str(storage))}
  delete:
    enabled: true
  redirect:
    disable: {"false" if redirect else "true"}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secrets.token_hex(16)}
{auth}"""
        path = self.root / "conf" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _start_registry(self, name: str, kind: str, auth: str = "", **kw) -> Registry:
        port = free_port()
        storage = self.root / "data" / name
        conf = self._registry_yaml(name, port, storage, auth)
        proc = spawn(name, ["docker-registry", "serve", str(conf)], self.root / "logs" / f"{name}.log",
                     env=_env_without_registry_vars())
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/v2/", proc)
        reg = Registry(name, kind, port, proc, storage=storage, **kw)
        self.registries[name] = reg
        return reg

    def start_open(self, name: str = "open") -> Registry:
        return self._start_registry(name, "open")

    def start_token(self, name: str = "token") -> Registry:
        keydir = self.root / "auth" / name
        bundle = make_token_keys(keydir)
        iport = free_port()
        issuer = spawn(f"{name}-issuer", [sys.executable, str(Path(__file__).resolve()), "issuer", "--port",
                                          str(iport), "--keydir", str(keydir), "--user", f"{USER}:{PASSWORD}"],
                       self.root / "logs" / f"{name}-issuer.log")
        self.procs.append(issuer)
        wait_http(f"http://127.0.0.1:{iport}/token?service=ping", issuer)
        auth = f"""auth:
  token:
    realm: http://127.0.0.1:{iport}/token
    service: {TOKEN_SERVICE}
    issuer: {TOKEN_ISSUER}
    rootcertbundle: {json.dumps(str(bundle))}
"""
        return self._start_registry(name, "token", auth, creds=(USER, PASSWORD), issuer=issuer, issuer_port=iport)

    def start_basic(self, name: str = "basic") -> Registry:
        htpasswd = self.root / "auth" / name / "htpasswd"
        htpasswd.parent.mkdir(parents=True, exist_ok=True)
        htpasswd.write_text(htpasswd_line(USER, PASSWORD))
        auth = f"""auth:
  htpasswd:
    realm: zmirror-e2e-basic
    path: {json.dumps(str(htpasswd))}
"""
        return self._start_registry(name, "basic", auth, creds=(USER, PASSWORD))

    def dead_url(self) -> str:
        """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
        return f"http://127.0.0.1:{free_port()}"

    def push(self, image: Image, reg: Registry, ref: str | None = None) -> None:
        args = ["copy", "-q", "--dest-tls-verify=false", "--preserve-digests", "--retry-times", "2"]
        if image.children:
            args.append("--all")
        if reg.creds_arg:
            args += ["--dest-creds", reg.creds_arg]
        args += [f"dir:{image.dir}", f"docker://{reg.host}/{ref or image.ref}"]
        skopeo(args, timeout=600)

    def push_many(self, jobs: list[tuple[Image, Registry]]) -> None:
        """Pushes in parallel across registries, sequentially within one registry."""
        by_reg: dict[str, list[Image]] = {}
        for img, reg in jobs:
            by_reg.setdefault(reg.name, []).append(img)

        def run(name: str) -> None:
            for img in by_reg[name]:
                self.push(img, self.registries[name])

        with ThreadPoolExecutor(max_workers=max(1, min(4, len(by_reg)))) as ex:
            for f in [ex.submit(run, n) for n in by_reg]:
                f.result()

    # -- zmirror

    def start_zmirror(self, name: str, upstreams: list[Upstream], *, anonymous: str = "all",
                      cache: bool = False, extra_toml: str = "", idle_timeout: float = 30,
                      cooldown: float = 30, upstream_toml: str = "") -> ZMirror:
        """``twistd -n zmirror`` on a fresh data dir; ``extra_toml`` goes into ``[cache]``,
        ``upstream_toml`` (more ``key = value`` lines) into ``[upstream]``."""
        base = self.root / "zmirror" / name
        data = base / "data"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        db_path = data / "registry.db"
        config = data / "config.toml"
        config.write_text(f"""# written by tests/e2e/harness.py
[server]
host = "127.0.0.1"
port = {port}

[admin]
username = "admin"
password = "{secrets.token_hex(12)}"

[database]
path = {json.dumps(str(db_path))}

[access]
anonymous = "{anonymous}"

[upstream]
connect_timeout = 5
idle_timeout = {idle_timeout:g}
cooldown = {cooldown:g}
{upstream_toml}

[cache]
enabled = {"true" if cache else "false"}
dir = {json.dumps(str(data / "cache"))}
{extra_toml}
""")
        os.chmod(config, 0o600)
        write_registries(db_path, upstreams)
        proc = self.spawn_zmirror(name, data, port)
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, timeout=60)
        zm = ZMirror(name, port, proc, data, upstreams)
        self.zmirrors[name] = zm
        return zm

    def spawn_zmirror(self, name: str, data: Path, port: int) -> Proc:
        """``twistd -n zmirror --data DATA`` on 127.0.0.1:``port`` (cwd: the data dir's parent, log
        ``logs/zmirror-NAME.log``), not waited for; the data dir must hold its ``config.toml``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        argv = [twistd_bin(), "-n", "--pidfile=", "zmirror", "--data", str(data),
                "--listen", f"tcp:{port}:interface=127.0.0.1"]
        proc = spawn(f"zmirror-{name}", argv, self.root / "logs" / f"zmirror-{name}.log", env=env,
                     cwd=data.parent)
        self.procs.append(proc)
        return proc

    def start_zmirror_access(self, name: str, upstreams: list[Upstream], *, anonymous: str = "whitelist",
                             whitelist: Iterable[str] = (), users: Iterable[tuple[str, str]] = (),
                             **kw) -> ZMirror:
        """:meth:`start_zmirror` in an access-control mode (default ``whitelist``), then the whitelist
        entries and registry users created through the admin API (as an operator would)."""
        zm = self.start_zmirror(name, upstreams, anonymous=anonymous, **kw)
        for prefix in whitelist:
            zm.add_whitelist(prefix, note="e2e")
        for username, password in users:
            zm.add_user(username, password)
        return zm

    def stop_zmirror(self, zm: ZMirror) -> None:
        zm.proc.stop()
        self.zmirrors.pop(zm.name, None)

    def restart_zmirror(self, zm: ZMirror, *, kill: bool = False, timeout: float = 60) -> ZMirror:
        """Stops ``zm`` (SIGTERM and a clean shutdown, or SIGKILL with ``kill``) and starts it again
        on the same data dir, config and port; ``zm`` is updated in place and returned."""
        if kill:
            if zm.proc.alive():
                zm.proc.popen.kill()
            zm.proc.popen.wait(10)
        else:
            zm.proc.stop()
        proc = self.spawn_zmirror(zm.name, zm.data, zm.port)
        zm.proc = proc
        wait_http(f"http://127.0.0.1:{zm.port}/v2/", proc, timeout=timeout)
        self.zmirrors[zm.name] = zm
        return zm

    def stop_registry(self, reg: Registry) -> None:
        """Stops a registry (its storage stays); :meth:`resume_registry` starts it again."""
        reg.proc.stop()

    def resume_registry(self, reg: Registry, timeout: float = 30) -> Registry:
        """Starts a stopped open registry again on the same port, config and storage."""
        if reg.proc.alive():
            return reg
        if reg.kind != "open":
            raise HarnessError(f"resume_registry: only open registries can be restarted, not {reg.kind}")
        conf = self.root / "conf" / f"{reg.name}.yml"
        proc = spawn(reg.name, ["docker-registry", "serve", str(conf)], reg.proc.log,
                     env=_env_without_registry_vars())
        self.procs.append(proc)
        reg.proc = proc
        wait_http(f"{reg.url}/v2/", proc, timeout=timeout)
        return reg

    # -- teardown

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for p in reversed(self.procs):
            p.stop()
        if self.keep:
            print(f"zmirror e2e: kept {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def twistd_bin() -> str:
    cand = Path(sys.executable).parent / "twistd"
    return str(cand) if cand.exists() else "twistd"


def write_registries(db_path: Path | str, upstreams: list[Upstream]) -> None:
    """Migrates zmirror's database (a SQLite file, or a ``postgresql://`` URL) and replaces the
    seeded registries rows with ``upstreams``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if isinstance(db_path, str) and db_path.startswith(("postgresql://", "postgres://")):
        from zmirror.db import postgresql

        postgresql.migrate(db_path)
        conn = postgresql.connect(db_path)  # its cursors take the same "?" SQL
        columns = {"namespace"}  # migrated to this checkout's latest schema just now
    else:
        from zmirror.db.sqlite import migrate

        migrate(db_path)
        conn = sqlite3.connect(str(db_path))
        columns = {row[1] for row in conn.execute("PRAGMA table_info(registries)")}
    now = time.time()
    try:
        with_ns = "namespace" in columns
        if not with_ns and any(u.namespace != "docker.io" for u in upstreams):
            raise HarnessError("this zmirror's registries table has no namespace column (migration 0004)")
        with conn:
            conn.execute("DELETE FROM registries")
            for i, u in enumerate(upstreams, 1):
                row = (u.name, u.url, u.priority if u.priority is not None else i, int(u.enabled), u.username,
                       u.password, now, now)
                if with_ns:
                    conn.execute(
                        "INSERT INTO registries (name, url, priority, enabled, username, password, created_at, "
                        "updated_at, namespace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row + (u.namespace,))
                else:
                    conn.execute(
                        "INSERT INTO registries (name, url, priority, enabled, username, password, created_at, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    finally:
        conn.close()


# --------------------------------------------------------------------------- clients


class SkopeoError(HarnessError):
    def __init__(self, args: list[str], rc: int, stderr: str):
        super().__init__(f"skopeo {' '.join(args)} exited {rc}: {stderr.strip()[-3000:]}")
        self.rc, self.stderr = rc, stderr


_AUTHFILE = os.path.join(tempfile.gettempdir(), f"zmirror-e2e-{os.getpid()}-no-auth.json")


def skopeo(args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    # An auth file that never exists: no credentials from the machine's docker/podman config leak in.
    env = dict(os.environ, REGISTRY_AUTH_FILE=_AUTHFILE)
    p = subprocess.run(["skopeo", *args], capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                       check=False)
    if check and p.returncode != 0:
        raise SkopeoError(args, p.returncode, p.stderr.decode(errors="replace"))
    return p


def skopeo_copy(host: str, ref: str, dest: Path, *, creds: str | None = None, all_images: bool = True,
                timeout: float = 600) -> Path:
    """``skopeo copy --src-tls-verify=false [--all] docker://HOST/REF dir:DEST``."""
    if dest.exists():
        shutil.rmtree(dest)
    args = ["copy", "-q", "--src-tls-verify=false"]
    if all_images:
        args.append("--all")
    args += ["--src-creds", creds] if creds else ["--src-no-creds"]
    args += [f"docker://{host}/{ref}", f"dir:{dest}"]
    skopeo(args, timeout=timeout)
    return dest


def skopeo_inspect_raw(host: str, ref: str, *, creds: str | None = None, timeout: float = 120) -> bytes:
    args = ["inspect", "--raw", "--tls-verify=false"]
    args += ["--creds", creds] if creds else ["--no-creds"]
    args.append(f"docker://{host}/{ref}")
    return skopeo(args, timeout=timeout).stdout


def dir_problems(dest: Path, image: Image) -> list[str]:
    """What is wrong with a ``skopeo copy --all ... dir:DEST`` of ``image`` (empty list: all digests right)."""
    out = []
    top = dest / "manifest.json"
    if not top.exists():
        return [f"{dest}: no manifest.json"]
    got = "sha256:" + sha256_hex(top.read_bytes())
    if got != image.digest:
        out.append(f"manifest.json is {got}, upstream digest {image.digest} (manifest re-serialized or wrong)")
    for child in image.children:
        p = dest / (child.digest.split(":", 1)[1] + ".manifest.json")
        if not p.exists():
            out.append(f"child manifest {child.digest} ({child.platform}) missing")
        elif "sha256:" + sha256_hex(p.read_bytes()) != child.digest:
            out.append(f"child manifest {child.digest} has wrong content")
    for digest, blob in image.all_blobs().items():
        p = dest / digest.split(":", 1)[1]
        if not p.exists():
            out.append(f"blob {digest} missing")
            continue
        size = p.stat().st_size
        if size != blob.size:
            out.append(f"blob {digest}: {size} bytes, expected {blob.size}")
        elif sha256_file(p) != digest:
            out.append(f"blob {digest}: content does not match its digest")
    return out


@dataclass
class HTTPResult:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)

    def describe(self) -> str:
        hs = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"HTTP {self.status} [{hs}] body={self.body[:300]!r}"


def _send_raw(method: str, url: str, headers: Iterable[tuple[str, str]], timeout: float):
    """Send a request on a fresh connection (repeated header names stay separate lines);
    returns (connection, response) — the caller reads the body and closes."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def http_request(method: str, url: str, headers: Iterable[tuple[str, str]] = (), timeout: float = 60,
                 read_limit: int | None = None) -> HTTPResult:
    """One request on a fresh connection; repeated header names become separate lines."""
    conn, resp = _send_raw(method, url, headers, timeout)
    try:
        body = resp.read() if read_limit is None else resp.read(read_limit)
        return HTTPResult(resp.status, resp.headers, body)
    finally:
        conn.close()


def http_json(method: str, url: str, obj=None, *, auth: tuple[str, str] | None = None,
              headers: Iterable[tuple[str, str]] = (), timeout: float = 30) -> HTTPResult:
    """One request with an optional JSON body and HTTP Basic credentials."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    hdrs = dict(headers)
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    body = None
    if obj is not None:
        body = json.dumps(obj).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body=body, headers=hdrs)
        resp = conn.getresponse()
        return HTTPResult(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def manifest_headers(*types: str) -> list[tuple[str, str]]:
    return [("Accept", t) for t in (types or MANIFEST_ACCEPT)]


@dataclass
class StreamedResult:
    """A response read in chunks and hashed, never held in memory."""

    status: int
    headers: http.client.HTTPMessage
    length: int
    digest: str  # "sha256:<hex>" of the bytes read

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def http_stream(method: str, url: str, headers: Iterable[tuple[str, str]] = (), timeout: float = 60,
                chunk: int = MiB) -> StreamedResult:
    """:func:`http_request` for big bodies: reads to the end in ``chunk`` reads and hashes them."""
    conn, resp = _send_raw(method, url, headers, timeout)
    try:
        h, n = hashlib.sha256(), 0
        while True:
            data = resp.read(chunk)
            if not data:
                break
            h.update(data)
            n += len(data)
        return StreamedResult(resp.status, resp.headers, n, "sha256:" + h.hexdigest())
    finally:
        conn.close()


class Fetched:
    """A GET read to its end (or its failure), hashed as read."""

    def __init__(self, status: int | None, length: int, digest: str, error: BaseException | None):
        self.status, self.length, self.digest, self.error = status, length, digest, error

    def __repr__(self) -> str:
        return f"<GET {self.status}: {self.length} bytes {self.digest[:19]}… error={self.error!r}>"


def fetch(url: str, timeout: float = 90, progress: list | None = None) -> Fetched:
    """GET ``url``; never raises for a broken body (the error is in the result)."""
    u = url.split("://", 1)[1]
    hostport, path = u.split("/", 1)
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    h, n, status = hashlib.sha256(), 0, None
    try:
        conn.request("GET", "/" + path)
        resp = conn.getresponse()
        status = resp.status
        while True:
            data = resp.read(MiB)
            if not data:
                break
            h.update(data)
            n += len(data)
            if progress is not None:
                progress[0] = n
        cl = resp.getheader("Content-Length")
        # read(amt) ends quietly at an early EOF: a body short of its Content-Length is an error
        err = http.client.IncompleteRead(b"", int(cl) - n) if cl is not None and n < int(cl) else None
        return Fetched(status, n, "sha256:" + h.hexdigest(), err)
    except (OSError, http.client.HTTPException) as e:
        return Fetched(status, n, "sha256:" + h.hexdigest(), e)
    finally:
        conn.close()


class ThrottledProxy:
    """A TCP forwarder on 127.0.0.1 to ``127.0.0.1:target_port`` that paces what the target sends at
    ``rate`` bytes/s per connection (None: unlimited; may be changed at any time, open connections
    included).  Put it between zmirror and a registry to keep a download in flight long enough to
    join it, read part of it, or kill zmirror in the middle of it.  Threads; :meth:`close` stops all."""

    def __init__(self, target_port: int, rate: float | None = None, chunk: int = 64 * 1024):
        self.target_port = target_port
        self.rate = rate
        self.chunk = chunk
        self.connections = 0  # accepted so far
        self._flowing = threading.Event()  # cleared by hold(): the target's bytes wait
        self._flowing.set()
        self._closed = False
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"throttle-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """Hold back everything the target sends (responses not even started) until :meth:`release`."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            self._close_pair(client, None)
            return
        self._track(upstream)
        for s in (client, upstream):
            s.settimeout(120)
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, paced: bool) -> None:
        try:
            while not self._closed:
                data = src.recv(self.chunk)
                if not data:
                    break
                if paced:
                    self._flowing.wait(60)
                dst.sendall(data)
                rate = self.rate
                if paced and rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            self._close_pair(src, dst)

    def _close_pair(self, a: socket.socket, b: socket.socket | None) -> None:
        for s in (a, b):
            if s is None:
                continue
            with self._lock:
                self._socks.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._thread.join(5)


# --------------------------------------------------------------------------- the shared environment


class E2EEnvironment(Harness):
    """The suite's standard set, started once per process by :func:`shared`.

    Upstreams (distribution 2.8):

    - ``open``: no auth; holds dockerv2, oci, ociindex, dockerlist (as
      ``library/e2elist``) and big;
    - ``open2``: no auth; holds only ``e2e/onlyb`` (so ``open`` answers 404 for it);
    - ``token``: token auth (anonymous pull allowed); holds dockerv2 and ociindex;
    - ``basic``: htpasswd; holds oci and dockerlist.

    zmirror instances (started on first use, see :meth:`proxy`):

    - ``main``: upstreams [dead (connection refused), open, open2] in that priority order;
    - ``token``: [token], anonymous to the upstream;
    - ``basic``: [basic] with the user's credentials in the registries row.
    """

    PROXIES = ("main", "token", "basic")

    def __init__(self, big_mib: int = DEFAULT_BIG_MIB, **kw):
        super().__init__(**kw)
        self.big_mib = big_mib
        self.images: dict[str, Image] = {}
        self.dead = ""
        self.timings: dict[str, float] = {}
        self._extra_lock = threading.Lock()
        self._extra_keys: dict[str, tuple[str, ...]] = {}

    def setup(self) -> E2EEnvironment:
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as ex:
            fut = ex.submit(build_images, self.root / "images", self.big_mib)
            self.start_open("open")
            self.start_open("open2")
            self.start_token("token")
            self.start_basic("basic")
            self.images = fut.result()
        self.timings["start+build"] = time.monotonic() - t0
        self.dead = self.dead_url()
        i, r = self.images, self.registries
        t1 = time.monotonic()
        self.push_many([
            (i["dockerv2"], r["open"]), (i["oci"], r["open"]), (i["ociindex"], r["open"]),
            (i["dockerlist"], r["open"]), (i["big"], r["open"]),
            (i["onlyb"], r["open2"]),
            (i["dockerv2"], r["token"]), (i["ociindex"], r["token"]),
            (i["oci"], r["basic"]), (i["dockerlist"], r["basic"]),
        ])
        self.timings["push"] = time.monotonic() - t1
        return self

    def extra_open(self, name: str, keys: Iterable[str]) -> Registry:
        """An open registry of its own (own port and storage) holding the built images ``keys``,
        for tests that stop and restart their upstream without disturbing the shared ones.
        Started and seeded once per process; started again here if a test left it stopped."""
        keys = tuple(keys)
        with self._extra_lock:
            reg = self.registries.get(name)
            if reg is None:
                if name in ("open", "open2", "token", "basic"):
                    raise HarnessError(f"{name} is a shared registry")
                reg = self.start_open(name)
                self.push_many([(self.images[k], reg) for k in keys])
                self._extra_keys[name] = keys
            elif self._extra_keys.get(name) != keys:
                raise HarnessError(f"extra registry {name} holds {self._extra_keys.get(name)}, not {keys}")
            return self.resume_registry(reg)

    def proxy(self, name: str) -> ZMirror:
        with self._lock:
            zm = self.zmirrors.get(name)
        if zm is not None and zm.proc.alive():
            return zm
        r = self.registries
        if name == "main":
            ups = [Upstream("dead", self.dead), Upstream("open", r["open"].url), Upstream("open2", r["open2"].url)]
        elif name == "token":
            ups = [Upstream("token", r["token"].url)]
        elif name == "basic":
            ups = [Upstream("basic", r["basic"].url, username=USER, password=PASSWORD)]
        else:
            raise KeyError(name)
        return self.start_zmirror(name, ups)


_shared: E2EEnvironment | None = None
_shared_error: BaseException | None = None
_shared_lock = threading.Lock()


def shared() -> E2EEnvironment:
    """The process-wide environment: built on first call, stopped at interpreter exit.

    A failed setup is remembered, so later tests fail fast with the same error.
    """
    global _shared, _shared_error
    with _shared_lock:
        if _shared_error is not None:
            raise HarnessError(f"e2e environment failed to start: {_shared_error}")
        if _shared is None:
            env = E2EEnvironment()
            atexit.register(env.stop)
            try:
                env.setup()
            except BaseException as e:
                _shared_error = e
                env.stop()
                raise
            _shared = env
        return _shared


def _up_main() -> None:
    env = shared()
    zm = env.proxy("main")
    print(f"root      {env.root}")
    for r in env.registries.values():
        extra = f" (issuer :{r.issuer_port})" if r.issuer_port else ""
        print(f"{r.name:9} {r.url}{extra} creds={r.creds_arg or '-'}")
    print(f"zmirror   {zm.url}  upstreams: " + ", ".join(f"{u.name}={u.url}" for u in zm.upstreams))
    serve_until_interrupted(env.images, env.timings)


def serve_until_interrupted(images: dict, timings: dict) -> None:
    """``up``'s end: print the images and the start timings, then wait for Ctrl-C."""
    for img in images.values():
        print(f"image     {img.ref:24} {img.digest}")
    print(f"timings   {timings}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "issuer":
        issuer_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "up":
        _up_main()
    else:
        print(__doc__)
        sys.exit(2)
