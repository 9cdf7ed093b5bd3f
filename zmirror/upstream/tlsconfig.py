"""Per-upstream TLS: the CA bundle trusted besides the system's, a client
certificate for mTLS, verification off (explicitly), and a server name
override (design: docs/design/upstream.md, "TLS and egress")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


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


class _SystemAndBundle:
    """An ``IOpenSSLTrustRoot``: the system's CAs and ``certs`` besides."""

    def __init__(self, certs: list):
        self.certs = certs

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for c in self.certs:
            store.add_cert(c.original)


def _pem_certificates(pem: str, what: str) -> list:
    blocks = [b for b in pem.split("-----END CERTIFICATE-----") if "-----BEGIN CERTIFICATE-----" in b]
    if not blocks:
        raise ValueError(f"{what}: no PEM certificate found")
    out = []
    for b in blocks:
        try:
            out.append(ssl.Certificate.loadPEM((b + "-----END CERTIFICATE-----\n").encode()))
        except Exception:
            raise ValueError(f"{what}: a certificate could not be read") from None
    return out


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """The ``IPolicyForHTTPS`` of one upstream's settings.  ``host``: the
    upstream's own host (the URL's): the client certificate, the server name
    override and ``verify = False`` apply to it alone; other hosts reached for
    this upstream (a token realm, a CDN redirect) are verified against the
    system's CAs and the bundle.  Raises ValueError (a clear message) for
    settings that cannot be used."""

    def __init__(self, settings: TLSSettings, host: str):
        self.settings = settings
        self.host = host.lower()
        self._trust = _SystemAndBundle(_pem_certificates(settings.ca, "ca")) if settings.ca.strip() else None
        self._client: Optional[ssl.PrivateCertificate] = None
        if settings.client_cert.strip() or settings.client_key.strip():
            if not (settings.client_cert.strip() and settings.client_key.strip()):
                raise ValueError("client_cert and client_key go together")
            cert = _pem_certificates(settings.client_cert, "client_cert")[0]
            try:
                self._client = ssl.PrivateCertificate.fromCertificateAndKeyPair(
                    cert, ssl.KeyPair.load(settings.client_key.encode(), ssl.crypto.FILETYPE_PEM))
            except Exception:
                raise ValueError("client_key: not a PEM private key for client_cert") from None
        self._default = BrowserLikePolicyForHTTPS()

    def creatorForNetloc(self, hostname: bytes, port: int):
        name = hostname.decode("ascii", "replace").lower()
        own = name == self.host
        if own and not self.settings.verify:
            return _unverified(self._client)
        if own and self.settings.server_name:
            name = self.settings.server_name
        if self._trust is None and not (own and self._client is not None) and name == hostname.decode("ascii", "replace").lower():
            return self._default.creatorForNetloc(hostname, port)
        return ssl.optionsForClientTLS(name, trustRoot=self._trust or ssl.platformTrust(),
                                       clientCertificate=self._client if own else None)


def _unverified(client: Optional[ssl.PrivateCertificate]):
    kw = {}
    if client is not None:
        kw = {"privateKey": client.privateKey.original, "certificate": client.original}
    return ssl.CertificateOptions(verify=False, **kw)


__all__ = ["TLSPolicy", "TLSSettings"]
