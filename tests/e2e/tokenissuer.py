"""A Docker-Hub-style token issuer for distribution's token auth (ES256 JWTs with an ``x5c``
header; PyJWT + cryptography), run as a process of its own by the harness::

    python tests/e2e/tokenissuer.py --port P --keydir D --user U:P

:func:`make_token_keys` writes the CA and signer it uses (the registry trusts the bundle).
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import sys
import time
from pathlib import Path

TOKEN_SERVICE, TOKEN_ISSUER = "zmirror-e2e-registry", "zmirror-e2e-issuer"


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
    """``tokenissuer.py --port P --keydir D --user U:P``: a Docker-Hub-style token endpoint.

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

    ap = argparse.ArgumentParser(prog="tokenissuer.py")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--keydir", required=True)
    ap.add_argument("--user", required=True, help="USER:PASSWORD")
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


if __name__ == "__main__":
    issuer_main(sys.argv[1:])
