"""Per-upstream TLS: the CA bundle trusted besides the system's, a client
certificate for mTLS, verification off (explicitly), a server name override;
the checks the admin API runs on those fields (:func:`tls_field_errors`) and
the short reason a TLS failure is reported with (:func:`tls_failure_reason`).
Design: docs/design/upstream.md, "Per-upstream TLS"."""

from __future__ import annotations

import ipaddress
import re
import weakref
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.exceptions import CertificateError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

MAX_PEM = 64 * 1024  # bytes per PEM field (a CA bundle, a certificate chain, a key)
_CREATOR_CACHE = 256  # host names whose connection creators a policy keeps


@dataclass(frozen=True)
class TLSSettings:
    """What one upstream's ``registries`` row says about TLS (all empty: the
    system trust store, no client certificate, verification on)."""

    ca: str = ""  # PEM bundle trusted in addition to the system's ("" = the system's only)
    client_cert: str = ""  # PEM certificate (and chain) for mTLS
    client_key: str = field(default="", repr=False)  # its PEM private key (unencrypted)
    verify: bool = True  # False: no certificate or host name check (shown as a warning)
    server_name: str = ""  # SNI and the name checked ("" = the URL's host)

    @property
    def default(self) -> bool:
        return self == TLSSettings()


# -- checking the fields (admin API) ------------------------------------------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _pem_kinds(text: str) -> list[str]:
    return _PEM_BLOCK.findall(text)


def _certificates(text: str, what: str) -> tuple[list, str | None]:
    """The certificates of a PEM text, or an error message (never quoting it)."""
    kinds = _pem_kinds(text)
    if any("PRIVATE KEY" in k for k in kinds):
        return [], f"contains a private key: paste only certificates here{' (the key goes in client_key)' if what == 'client_cert' else ''}"
    if not kinds:
        return [], "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
    if any(k != "CERTIFICATE" for k in kinds):
        return [], "only CERTIFICATE blocks are accepted"
    try:
        certs = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return [], "a certificate could not be parsed (damaged or not PEM)"
    if len(certs) != len(kinds):
        return [], "a certificate could not be parsed (damaged or not PEM)"
    return certs, None


def _private_key(text: str) -> tuple[Any, str | None]:
    kinds = _pem_kinds(text)
    if "ENCRYPTED PRIVATE KEY" in kinds or "Proc-Type: 4,ENCRYPTED" in text:
        return None, "the key is encrypted: paste an unencrypted key (openssl pkey -in key.pem)"
    keys = [k for k in kinds if k.endswith("PRIVATE KEY")]
    if len(keys) != 1 or len(kinds) != 1:
        return None, "expected exactly one PEM private key (-----BEGIN PRIVATE KEY-----)"
    try:
        return serialization.load_pem_private_key(text.encode("ascii"), password=None), None
    except TypeError:
        return None, "the key is encrypted: paste an unencrypted key (openssl pkey -in key.pem)"
    except (ValueError, UnicodeEncodeError, crypto.Error):
        return None, "the private key could not be parsed (damaged or not PEM)"
    except Exception:  # an unsupported key type
        return None, "the private key could not be used (unsupported type)"


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def server_name_error(name: str) -> str | None:
    """Why ``name`` is not usable as a TLS server name (a DNS name or an IP address), or None."""
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if not name.isascii():
        return "must be an ASCII DNS name (use the xn-- form) or an IP address"
    host = name.removesuffix(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.split(".")):
        return "not a valid DNS name or IP address"
    return None


def tls_field_errors(*, ca: str = "", client_cert: str = "", client_key: str = "",
                     server_name: str = "") -> dict[str, str]:
    """Field -> message for each unusable TLS field of an upstream ({} when all are usable).

    ``client_key`` is the key that will be stored (the stored one when a PUT
    keeps it).  The messages never quote the fields' contents."""
    errors: dict[str, str] = {}
    fields = {"ca": ca, "client_cert": client_cert, "client_key": client_key, "server_name": server_name}
    for name, value in fields.items():
        if value is None:
            fields[name] = ""
        elif not isinstance(value, str):
            errors[name] = "must be a string"
        elif len(value.encode("utf-8", "replace")) > MAX_PEM:
            errors[name] = f"too large (at most {MAX_PEM // 1024} KiB)"
    ca, client_cert, client_key, server_name = (fields[k] if k not in errors else "" for k in fields)
    if ca.strip():
        errors.setdefault("ca", _certificates(ca, "ca")[1])
    chain: list = []
    if client_cert.strip():
        chain, err = _certificates(client_cert, "client_cert")
        if err:
            errors.setdefault("client_cert", err)
    key = None
    if client_key.strip():
        key, err = _private_key(client_key)
        if err:
            errors.setdefault("client_key", err)
    if client_cert.strip() and not client_key.strip() and "client_key" not in errors:
        errors["client_key"] = "required with client_cert"
    if client_key.strip() and not client_cert.strip() and "client_cert" not in errors:
        errors["client_cert"] = "required with client_key"
    if chain and key is not None:
        try:
            match = _spki(chain[0].public_key()) == _spki(key.public_key())
        except Exception:
            match = False
        if not match:
            errors.setdefault("client_key", "does not match client_cert (the first certificate)")
    if server_name.strip():
        err = server_name_error(server_name.strip())
        if err:
            errors.setdefault("server_name", err)
    return {k: v for k, v in errors.items() if v}


# -- the policy (IPolicyForHTTPS) -----------------------------------------------------------------

class TLSVerifyError(SSL.Error):
    """The upstream's certificate was refused; ``reason`` says why, shortly."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# OpenSSL's X509_verify_cert_error_string for the codes seen in practice (OpenSSL 3 wording)
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    62: "hostname mismatch",
    64: "IP address mismatch",
}


def _verify_error_text(code: int) -> str:
    text = _VERIFY_ERRORS.get(code)
    if text is None:
        try:
            from OpenSSL._util import ffi, lib

            text = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
        except Exception:
            text = f"verify error {code}"
    return text


def _subject(cert: crypto.X509) -> str:
    try:
        cn = cert.to_cryptography().subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return f"CN={cn[0].value}" if cn else cert.to_cryptography().subject.rfc4514_string()[:120]
    except Exception:
        return "?"


def _cert_names(cert: crypto.X509) -> str:
    """The names a certificate is for (its subjectAltNames, else its CN), shortly."""
    try:
        c = cert.to_cryptography()
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
            names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        if not names:
            cn = c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            return f"CN={cn[0].value} (no subjectAltName)" if cn else "no names"
        more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
        return ", ".join(names[:4]) + more
    except Exception:
        return "an unreadable certificate"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _verifier(protocol_ref, name: str, service_id):
    """The per-connection verify callback: OpenSSL's chain check, then the
    host name check on the leaf; a failure aborts the connection with a
    :class:`TLSVerifyError` carrying the reason."""

    def fail(reason: str) -> bool:
        protocol = protocol_ref()
        if protocol is not None:
            protocol.failVerification(Failure(TLSVerifyError(reason)))
        return False

    def callback(conn, cert, err, depth, ok) -> bool:
        try:
            if not ok:
                what = "" if depth == 0 else f" (at {_subject(cert)})"
                return fail(f"certificate verify failed: {_verify_error_text(err)}{what}")
            if depth == 0:
                try:
                    verify_service_identity(extract_patterns(cert), [service_id], [])
                except (VerificationError, CertificateError):
                    return fail(f"certificate name mismatch: expected {name}, got {_cert_names(cert)}")
            return True
        except Exception as e:  # never let an exception vanish inside OpenSSL
            return fail(f"certificate check failed: {e.__class__.__name__}")

    return callback


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Connections to one host name: SNI ``name`` (not for IP literals),
    and, when ``verify``, the chain checked against the options' trust and
    the certificate checked for ``name``."""

    def __init__(self, options: ssl.CertificateOptions, name: str, verify: bool):
        self._options = options
        self._name = name
        ip = _is_ip(name)
        self._sni = None if ip else name.encode("idna")
        self._verify = verify
        if verify:
            self._id = IPAddress_ID(name) if ip else DNS_ID(name)

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni:
            conn.set_tlsext_host_name(self._sni)
        if self._verify:
            conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                            _verifier(weakref.ref(tlsProtocol), self._name, self._id))
        return conn


def _bare_host(host: str) -> str:
    host = host.lower()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """The ``IPolicyForHTTPS`` of one upstream's settings.  ``host``: the
    upstream's own host (the URL's): the client certificate, the server name
    override and ``verify = False`` apply to it alone; other hosts reached for
    this upstream (a token realm, a CDN redirect) are verified against the
    system's CAs and the bundle, with no client certificate.  TLS 1.2 or
    newer.  Raises ValueError (a clear message, no key material) for settings
    that cannot be used."""

    def __init__(self, settings: TLSSettings, host: str):
        errors = tls_field_errors(ca=settings.ca, client_cert=settings.client_cert,
                                  client_key=settings.client_key, server_name=settings.server_name)
        if errors:
            raise ValueError("; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
        self.settings = settings
        self.host = _bare_host(host)
        self._bundle = [crypto.X509.from_cryptography(c) for c in
                        (_certificates(settings.ca, "ca")[0] if settings.ca.strip() else [])]
        self._client: dict = {}
        if settings.client_cert.strip():
            chain = [crypto.X509.from_cryptography(c) for c in _certificates(settings.client_cert, "client_cert")[0]]
            key = crypto.PKey.from_cryptography_key(_private_key(settings.client_key)[0])
            self._client = {"privateKey": key, "certificate": chain[0], "extraCertChain": chain[1:]}
        self._own_options: ssl.CertificateOptions | None = None
        self._other_options: ssl.CertificateOptions | None = None
        self._creators: dict[tuple[str, int], _ClientCreator] = {}

    # The OpenSSL contexts (the trust store loaded) are made on first use: an
    # http upstream never needs them.

    @property
    def _other(self) -> ssl.CertificateOptions:
        """The options for other hosts: verified, no client certificate."""
        if self._other_options is None:
            self._other_options = _options(self._bundle, verify=True)
        return self._other_options

    @property
    def _own(self) -> ssl.CertificateOptions:
        """The options for the upstream's own host."""
        if self._own_options is None:
            if self._client or not self.settings.verify:
                self._own_options = _options(self._bundle, verify=self.settings.verify, **self._client)
            else:
                self._own_options = self._other
        return self._own_options

    def creatorForNetloc(self, hostname: bytes, port: int) -> _ClientCreator:
        name = _bare_host(hostname.decode("ascii", "replace"))
        key = (name, port)
        got = self._creators.get(key)
        if got is None:
            if name == self.host:
                got = _ClientCreator(self._own, self.settings.server_name.strip() or name, self.settings.verify)
            else:
                got = _ClientCreator(self._other, name, True)
            if len(self._creators) >= _CREATOR_CACHE:
                self._creators.clear()
            self._creators[key] = got
        return got


def _options(bundle: list, *, verify: bool, **client) -> ssl.CertificateOptions:
    """Client options (TLS 1.2+): the system's CAs plus ``bundle`` when
    ``verify`` (an intermediate in the bundle is trusted as an anchor, as Go
    and curl do), none otherwise; ``client``: the certificate to present."""
    if verify:
        options = ssl.CertificateOptions(trustRoot=ssl.platformTrust(), raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                                         **client)
        store = options.getContext().get_cert_store()
        if bundle:
            for cert in bundle:
                store.add_cert(cert)
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    else:
        options = ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2, **client)
        options.getContext()
    return options


# -- reporting --------------------------------------------------------------------------------------

_HANDSHAKE_WORDS = ("alert", "handshake", "wrong version number", "unsupported protocol",
                    "no protocols available", "no shared cipher", "certificate", "packet length too long")


def _ssl_reason(e: SSL.Error) -> str:
    parts = []
    for arg in e.args:
        items = arg if isinstance(arg, list) else [arg]
        for item in items:
            if isinstance(item, tuple) and item:
                parts.append(str(item[-1]))
            elif isinstance(item, str) and item:
                parts.append(item)
    text = "; ".join(dict.fromkeys(p for p in parts if p)) or e.__class__.__name__
    low = text.lower()
    if "certificate verify failed" in low:
        return "certificate verify failed"
    if "certificate required" in low:
        return f"TLS handshake failed: {text} (the upstream wants a client certificate)"
    if "bad certificate" in low or "unknown ca" in low:
        return f"TLS handshake failed: {text} (the upstream refused the client certificate, or wants one)"
    if "wrong version number" in low or "packet length too long" in low:
        return f"TLS handshake failed: {text} (is the upstream plain HTTP?)"
    if any(w in low for w in _HANDSHAKE_WORDS):
        return f"TLS handshake failed: {text}"
    return f"TLS error: {text}"


def tls_failure_reason(error: Any) -> str | None:
    """A short reason for a TLS failure (a Failure or an exception, possibly
    wrapped by the HTTP client), or None when it is not about TLS."""
    seen: set = set()

    def walk(e: Any) -> str | None:
        if isinstance(e, Failure):
            e = e.value
        if e is None or id(e) in seen:
            return None
        seen.add(id(e))
        if isinstance(e, TLSVerifyError):
            return e.reason
        if isinstance(e, VerificationError):
            wanted = []
            for m in getattr(e, "errors", []):
                sid = getattr(m, "mismatched_id", None)
                w = getattr(sid, "hostname", None) or getattr(sid, "ip", None) or ""
                wanted.append(w.decode("ascii", "replace") if isinstance(w, bytes) else str(w))
            names = ", ".join(dict.fromkeys(w for w in wanted if w))
            return f"certificate name mismatch: expected {names}" if names else "certificate name mismatch"
        if isinstance(e, CertificateError):
            return "certificate name mismatch: the certificate has no usable names"
        if isinstance(e, SSL.Error) and not isinstance(e, (SSL.ZeroReturnError, SSL.SysCallError)):
            return _ssl_reason(e)
        for inner in getattr(e, "reasons", None) or []:  # ResponseFailed and its kind
            got = walk(inner)
            if got:
                return got
        for inner in (getattr(e, "__cause__", None), getattr(e, "__context__", None)):
            got = walk(inner)
            if got:
                return got
        return None

    return walk(error)


__all__ = ["MAX_PEM", "TLSPolicy", "TLSSettings", "TLSVerifyError", "server_name_error",
           "tls_failure_reason", "tls_field_errors"]
