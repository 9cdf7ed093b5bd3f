"""The e2e test images, built as skopeo ``dir:`` layouts with manifests serialized by us
(indented JSON, so a proxy that re-serializes a manifest changes its digest).

:func:`build_images` writes a docker v2 schema 2 image, an OCI image, an OCI index and a docker
manifest list (linux/amd64 + linux/arm64/v8 children), and a big OCI image
(:func:`build_big_image`: its first layer holds ``mib`` MiB of seeded random data, streamed to
disk, gzip level 0, never held in memory).  :func:`dir_problems` checks a ``skopeo copy ...
dir:`` of an image against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import secrets
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
DEFAULT_BIG_MIB = int(os.environ.get("ZMIRROR_E2E_BIG_MIB", "100"))


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
