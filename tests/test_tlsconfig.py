"""Per-upstream TLS (zmirror/upstream/tlsconfig.py): a real Twisted ``Agent`` with
:class:`TLSPolicy` against Debian's ``docker-registry`` serving TLS with a CA made by the test
(tests/fixtures/tlsregistry.py); the admin API's field checks; the failure reasons."""

from __future__ import annotations

import os
from types import SimpleNamespace

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import error as ierror
from twisted.internet import reactor
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseNeverReceived,
    readBody,
)

from tests.fixtures.helpers import coro, temp_dir
from tests.fixtures.tlsregistry import TestPKI, TLSRegistry, missing_registry
from zmirror.upstream import client as upstream_client
from zmirror.upstream.tlsconfig import (
    MAX_PEM,
    TLSPolicy,
    TLSSettings,
    TLSVerifyError,
    tls_failure_reason,
    tls_field_errors,
)

TIMEOUT = 15  # seconds any one request may take


async def get(policy: TLSPolicy, url: str) -> tuple[int, bytes]:
    """GET ``url`` with a fresh Agent over ``policy`` (no pooled connections left behind)."""
    agent = Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False),
                  connectTimeout=5)
    d = agent.request(b"GET", url.encode())
    d.addTimeout(TIMEOUT, reactor)
    response = await d
    body = await readBody(response)
    return response.code, body


async def failure_of(policy: TLSPolicy, url: str) -> Exception:
    try:
        code, _ = await get(policy, url)
    except Exception as e:
        return e
    raise AssertionError(f"{url} answered {code}; a TLS failure was expected")


class _RegistryCase(unittest.TestCase):
    skip = missing_registry()

    def setUp(self):
        self.root = temp_dir(self)
        self.pki = TestPKI(self.root / "pki")

    def registry(self, server=None, **kw) -> TLSRegistry:
        reg = TLSRegistry(self.root, server or self.pki.server, name=f"reg{len(self._cleanups)}", **kw)
        self.addCleanup(reg.stop)
        return reg


class TrustTests(_RegistryCase):
    @coro
    async def test_the_ca_bundle_makes_v2_answer(self):
        reg = self.registry()
        code, _ = await get(TLSPolicy(TLSSettings(ca=self.pki.ca.cert_pem), "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(code, 200)

    @coro
    async def test_by_name_with_the_bundle(self):
        reg = self.registry()
        code, _ = await get(TLSPolicy(TLSSettings(ca=self.pki.ca.cert_pem), "localhost"),
                            f"https://localhost:{reg.port}/v2/")
        self.assertEqual(code, 200)

    @coro
    async def test_without_the_ca_the_reason_is_the_unknown_issuer(self):
        reg = self.registry()
        e = await failure_of(TLSPolicy(TLSSettings(), "127.0.0.1"), reg.url + "/v2/")
        self.assertIsInstance(e, ResponseNeverReceived)
        self.assertEqual(tls_failure_reason(e), "certificate verify failed: unable to get local issuer certificate")

    @coro
    async def test_a_chain_ending_in_an_unknown_root_says_so(self):
        chain = self.root / "pki" / "chain.pem"  # the server sends its certificate and the CA's
        chain.write_text(self.pki.server.cert_pem + self.pki.ca.cert_pem)
        server = type(self.pki.server)(**{**self.pki.server.__dict__, "cert_path": chain})
        reg = self.registry(server)
        e = await failure_of(TLSPolicy(TLSSettings(ca=self.pki.other_ca.cert_pem), "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(tls_failure_reason(e), "certificate verify failed: self-signed certificate in certificate "
                                                "chain (at CN=zmirror test CA)")

    @coro
    async def test_the_bundle_is_trusted_besides_the_system_store(self):
        # the "system" store is the test CA (OpenSSL reads SSL_CERT_FILE); the bundle is another CA
        system = self.root / "pki" / "system.pem"
        system.write_text(self.pki.ca.cert_pem)
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(system)  # putenv: OpenSSL reads it in C
        self.addCleanup(lambda: os.environ.__setitem__("SSL_CERT_FILE", before) if before is not None
                        else os.environ.pop("SSL_CERT_FILE", None))
        by_system = self.registry()
        by_bundle = self.registry(self.pki.issue_server("by-other", issuer=self.pki.other_ca))
        policy = TLSPolicy(TLSSettings(ca=self.pki.other_ca.cert_pem), "127.0.0.1")
        self.assertEqual((await get(policy, by_system.url + "/v2/"))[0], 200)
        self.assertEqual((await get(policy, by_bundle.url + "/v2/"))[0], 200)

    @coro
    async def test_verify_off_connects_without_the_ca(self):
        reg = self.registry()
        code, _ = await get(TLSPolicy(TLSSettings(verify=False), "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(code, 200)

    @coro
    async def test_verify_off_is_for_the_upstreams_own_host_only(self):
        reg = self.registry()
        policy = TLSPolicy(TLSSettings(verify=False), "127.0.0.1")
        e = await failure_of(policy, f"https://localhost:{reg.port}/v2/")  # a realm or CDN host, say
        self.assertIn("certificate verify failed", tls_failure_reason(e))


class ServerNameTests(_RegistryCase):
    @coro
    async def test_the_override_is_the_name_checked(self):
        reg = self.registry(self.pki.named)  # a certificate for registry.test only
        settings = TLSSettings(ca=self.pki.ca.cert_pem, server_name="registry.test")
        code, _ = await get(TLSPolicy(settings, "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(code, 200)

    @coro
    async def test_without_the_override_the_names_differ(self):
        reg = self.registry(self.pki.named)
        e = await failure_of(TLSPolicy(TLSSettings(ca=self.pki.ca.cert_pem), "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(tls_failure_reason(e), "certificate name mismatch: expected 127.0.0.1, got registry.test")

    def test_the_override_is_sent_as_sni_also_with_verify_off(self):
        class Proto:  # what the creator reads of a TLSMemoryBIOProtocol
            factory = SimpleNamespace(wrappedFactory=None)

        for verify in (True, False):
            settings = TLSSettings(ca=self.pki.ca.cert_pem, verify=verify, server_name="registry.test")
            creator = TLSPolicy(settings, "10.0.0.1").creatorForNetloc(b"10.0.0.1", 443)
            conn = creator.clientConnectionForTLS(Proto())
            self.assertEqual(conn.get_servername(), b"registry.test")
        plain = TLSPolicy(TLSSettings(verify=False), "reg.example").creatorForNetloc(b"reg.example", 443)
        self.assertEqual(plain.clientConnectionForTLS(Proto()).get_servername(), b"reg.example")
        ip = TLSPolicy(TLSSettings(), "10.0.0.1").creatorForNetloc(b"10.0.0.1", 443)
        self.assertIsNone(ip.clientConnectionForTLS(Proto()).get_servername())  # no SNI for IP literals

    def test_tls_1_2_at_least(self):
        for settings in (TLSSettings(), TLSSettings(verify=False),
                         TLSSettings(client_cert=self.pki.client.cert_pem, client_key=self.pki.client.key_pem)):
            policy = TLSPolicy(settings, "h")
            for options in (policy._own, policy._other):
                flags = options.getContext().set_options(0)
                self.assertTrue(flags & SSL.OP_NO_TLSv1 and flags & SSL.OP_NO_TLSv1_1, settings)


class ClientCertificateTests(_RegistryCase):
    def mtls(self) -> TLSRegistry:
        return self.registry(client_ca=self.pki.client_ca)

    def settings(self, **kw) -> TLSSettings:
        return TLSSettings(ca=self.pki.ca.cert_pem, client_cert=self.pki.client.cert_pem,
                           client_key=self.pki.client.key_pem, **kw)

    @coro
    async def test_without_a_client_certificate_the_handshake_fails(self):
        reg = self.mtls()
        e = await failure_of(TLSPolicy(TLSSettings(ca=self.pki.ca.cert_pem), "127.0.0.1"), reg.url + "/v2/")
        reason = tls_failure_reason(e)
        self.assertTrue(reason.startswith("TLS handshake failed: "), reason)
        # TLS 1.3: "tlsv13 alert certificate required"; TLS 1.2: "tls alert bad certificate"
        self.assertRegex(reason, "alert (certificate required|bad certificate)")

    @coro
    async def test_with_it_v2_answers(self):
        reg = self.mtls()
        code, _ = await get(TLSPolicy(self.settings(), "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(code, 200)

    @coro
    async def test_verify_off_still_sends_it(self):
        reg = self.mtls()
        settings = TLSSettings(verify=False, client_cert=self.pki.client.cert_pem, client_key=self.pki.client.key_pem)
        code, _ = await get(TLSPolicy(settings, "127.0.0.1"), reg.url + "/v2/")
        self.assertEqual(code, 200)

    @coro
    async def test_it_goes_to_the_upstreams_own_host_only(self):
        reg = self.mtls()
        e = await failure_of(TLSPolicy(self.settings(), "127.0.0.1"), f"https://localhost:{reg.port}/v2/")
        self.assertRegex(tls_failure_reason(e), "alert (certificate required|bad certificate)")


class FieldErrorTests(unittest.TestCase):
    def setUp(self):
        self.pki = TestPKI(temp_dir(self))

    def test_usable_fields(self):
        p = self.pki
        self.assertEqual(tls_field_errors(), {})
        self.assertEqual(tls_field_errors(ca=p.ca.cert_pem + p.other_ca.cert_pem, client_cert=p.client.cert_pem,
                                          client_key=p.client.key_pem, server_name="registry.test"), {})
        self.assertEqual(tls_field_errors(client_cert=p.client.cert_pem + p.client_ca.cert_pem,  # a chain
                                          client_key=p.client.key_pem), {})
        for name in ("10.1.2.3", "::1", "reg-1.example.com", "localhost", "xn--bcher-kva.example"):
            self.assertEqual(tls_field_errors(server_name=name), {}, name)

    def test_pem_that_does_not_parse(self):
        p = self.pki
        broken = p.ca.cert_pem.replace(p.ca.cert_pem.splitlines()[3], "A" * 64)
        self.assertIn("ca", tls_field_errors(ca=broken))
        self.assertIn("ca", tls_field_errors(ca="hello"))
        self.assertIn("client_cert", tls_field_errors(client_cert="-----BEGIN CERTIFICATE-----\nxx\n"
                                                                  "-----END CERTIFICATE-----\n",
                                                      client_key=p.client.key_pem))
        errors = tls_field_errors(client_cert=p.client.cert_pem, client_key="-----BEGIN PRIVATE KEY-----\nQUFB\n"
                                                                              "-----END PRIVATE KEY-----\n")
        self.assertEqual(list(errors), ["client_key"])

    def test_a_key_that_does_not_match(self):
        p = self.pki
        errors = tls_field_errors(client_cert=p.client.cert_pem, client_key=p.server.key_pem)
        self.assertEqual(errors, {"client_key": "does not match client_cert (the first certificate)"})

    def test_an_encrypted_key(self):
        errors = tls_field_errors(client_cert=self.pki.client.cert_pem, client_key=self.pki.encrypted_key())
        self.assertIn("encrypted", errors["client_key"])

    def test_a_certificate_without_a_key_and_a_key_without_a_certificate(self):
        self.assertEqual(tls_field_errors(client_cert=self.pki.client.cert_pem),
                         {"client_key": "required with client_cert"})
        self.assertEqual(tls_field_errors(client_key=self.pki.client.key_pem),
                         {"client_cert": "required with client_key"})

    def test_a_key_pasted_as_a_certificate_is_not_echoed(self):
        key = self.pki.client.key_pem
        errors = tls_field_errors(ca=key, client_cert=key + self.pki.client.cert_pem, client_key=key)
        self.assertEqual(set(errors), {"ca", "client_cert"})
        body = "".join(errors.values())
        self.assertIn("private key", errors["ca"])
        for line in key.splitlines()[1:-1]:
            self.assertNotIn(line, body)

    def test_size_bounds(self):
        big = self.pki.ca.cert_pem * (MAX_PEM // len(self.pki.ca.cert_pem) + 1)
        self.assertEqual(tls_field_errors(ca=big), {"ca": "too large (at most 64 KiB)"})
        self.assertIn("client_key", tls_field_errors(client_cert=self.pki.client.cert_pem, client_key="x" * (MAX_PEM + 1)))

    def test_server_names(self):
        for bad in ("bad name", "-x.example", "a..b", "x" * 64 + ".example", "*.example.com", "registry.example:443",
                    "https://registry.example", "bücher.example", "a_b.example"):
            self.assertIn("server_name", tls_field_errors(server_name=bad), bad)

    def test_the_policy_refuses_unusable_settings_without_quoting_the_key(self):
        p = self.pki
        with self.assertRaises(ValueError) as cm:
            TLSPolicy(TLSSettings(client_cert=p.client.cert_pem, client_key=p.server.key_pem), "h")
        self.assertIn("client_key", str(cm.exception))
        self.assertNotIn(p.server.key_pem.splitlines()[1], str(cm.exception))
        self.assertNotIn(p.server.key_pem.splitlines()[1], repr(TLSSettings(client_key=p.server.key_pem)))


class ReasonTests(unittest.TestCase):
    def test_openssl_errors(self):
        def ssl_error(reason):
            return SSL.Error([("SSL routines", "", reason)])

        wrapped = ResponseNeverReceived([Failure(ssl_error("tlsv13 alert certificate required"))])
        self.assertEqual(tls_failure_reason(wrapped), "TLS handshake failed: tlsv13 alert certificate required "
                                                      "(the upstream wants a client certificate)")
        self.assertEqual(tls_failure_reason(Failure(ssl_error("certificate verify failed"))),
                         "certificate verify failed")
        self.assertEqual(tls_failure_reason(ssl_error("wrong version number")),
                         "TLS handshake failed: wrong version number (is the upstream plain HTTP?)")
        self.assertEqual(tls_failure_reason(ssl_error("sslv3 alert handshake failure")),
                         "TLS handshake failed: sslv3 alert handshake failure")

    def test_our_reasons_and_service_identity_s(self):
        e = ResponseNeverReceived([Failure(TLSVerifyError("certificate verify failed: certificate has expired"))])
        self.assertEqual(tls_failure_reason(e), "certificate verify failed: certificate has expired")
        mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("registry.example"))])
        self.assertEqual(tls_failure_reason(Failure(mismatch)),
                         "certificate name mismatch: expected registry.example")

    def test_other_failures_are_not_tls(self):
        for e in (ierror.ConnectionRefusedError(), ResponseNeverReceived([Failure(ierror.ConnectionLost())]),
                  ValueError("x"), SSL.ZeroReturnError()):
            self.assertIsNone(tls_failure_reason(e), e)

    def test_the_upstream_error_carries_it(self):
        e = ResponseNeverReceived([Failure(TLSVerifyError("certificate verify failed: self-signed certificate"))])
        err = upstream_client._describe(e, "https://registry.example:5000/v2/")
        self.assertEqual(str(err), "registry.example:5000: certificate verify failed: self-signed certificate")
        refused = upstream_client._describe(ierror.ConnectionRefusedError(), "https://registry.example/v2/")
        self.assertIn("cannot connect", str(refused))

