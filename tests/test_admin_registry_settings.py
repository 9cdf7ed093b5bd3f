"""/api/registries: the proxy and TLS settings of a registry — round trips with the
secrets masked and kept, field errors for bad input, and the test of an unsaved
registry (POST /api/registries/test) with its ``steps``."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.admin import AdminTestMixin
from tests.fixtures.helpers import coro
from tests.fixtures.tlsregistry import TestPKI
from zmirror.admin.registries import probe_steps

_PKI: dict = {}


def pki(case: unittest.TestCase) -> TestPKI:
    """One test PKI for the module (making keys costs time)."""
    if "pki" not in _PKI:
        _PKI["pki"] = TestPKI(Path(case.mktemp()) / "pki")
    return _PKI["pki"]


class RegistrySettingsTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.published = []
        self.registries.subscribe(self.published.append)
        self.pki = pki(self)

    async def create(self, **body):
        body.setdefault("name", "Private")
        body.setdefault("url", "https://registry.internal:5000")
        code, _h, obj = await self.call("POST", "/api/registries", body)
        self.assertEqual(code, 201, obj)
        return obj

    def stored(self, rid: int) -> dict:
        """The row the proxy core was last handed (secrets included)."""
        return next(r for r in self.published[-1] if r["id"] == rid)

    async def put(self, rid: int, body: dict, status: int = 200):
        code, _h, obj = await self.call("PUT", f"/api/registries/{rid}", body)
        self.assertEqual(code, status, obj)
        return obj

    # --- round trips -----------------------------------------------------------------------

    @coro
    async def test_create_and_read_back_with_secrets_masked(self):
        made = await self.create(proxy="http://corp:Pr0xy-pw@Proxy.Corp.example:3128", tls_verify=True,
                                 ca=self.pki.ca.cert_pem, client_cert=self.pki.client.cert_pem,
                                 client_key=self.pki.client.key_pem, server_name="registry.test")
        self.assertEqual(made["proxy"], "http://corp:****@proxy.corp.example:3128")
        self.assertEqual(made["ca"].strip(), self.pki.ca.cert_pem.strip())
        self.assertEqual(made["client_cert"].strip(), self.pki.client.cert_pem.strip())
        self.assertIs(made["has_client_key"], True)
        self.assertNotIn("client_key", made)
        self.assertEqual(made["server_name"], "registry.test")
        for path in (f"/api/registries/{made['id']}", "/api/registries"):
            _c, _h, obj = await self.call("GET", path)
            text = repr(obj)
            self.assertNotIn("Pr0xy-pw", text)
            self.assertNotIn("PRIVATE KEY", text)
        row = self.stored(made["id"])  # the proxy core gets the real values
        self.assertEqual(row["proxy"], "http://corp:Pr0xy-pw@proxy.corp.example:3128")
        self.assertEqual(row["client_key"].strip(), self.pki.client.key_pem.strip())
        self.assertIs(row["tls_verify"], True)

    @coro
    async def test_defaults(self):
        made = await self.create()
        self.assertEqual((made["proxy"], made["tls_verify"], made["ca"], made["client_cert"],
                          made["has_client_key"], made["server_name"]), (None, True, "", "", False, ""))
        self.assertIsNone(self.stored(made["id"])["proxy"])
        made = await self.create(name="Direct", proxy="", tls_verify=False)
        self.assertEqual((made["proxy"], made["tls_verify"]), ("", False))
        self.assertEqual(self.stored(made["id"])["proxy"], "")  # direct, not the default
        made = await self.create(name="NoPassword", proxy="socks5h://tunnel.example:1080")
        self.assertEqual(made["proxy"], "socks5h://tunnel.example:1080")

    @coro
    async def test_put_keeps_masked_proxy_password_and_left_out_key(self):
        made = await self.create(proxy="http://corp:Pr0xy-pw@proxy.example:3128",
                                 client_cert=self.pki.client.cert_pem, client_key=self.pki.client.key_pem)
        rid = made["id"]
        # the dialog sends back what GET gave: the password and the key stay
        obj = await self.put(rid, {"name": "Renamed", "proxy": made["proxy"], "client_cert": made["client_cert"]})
        self.assertEqual(obj["proxy"], "http://corp:****@proxy.example:3128")
        self.assertIs(obj["has_client_key"], True)
        self.assertEqual(self.stored(rid)["proxy"], "http://corp:Pr0xy-pw@proxy.example:3128")
        self.assertEqual(self.stored(rid)["client_key"].strip(), self.pki.client.key_pem.strip())
        # another proxy host with the password still masked: the stored password goes with it
        await self.put(rid, {"proxy": "http://corp:****@proxy2.example:8080"})
        self.assertEqual(self.stored(rid)["proxy"], "http://corp:Pr0xy-pw@proxy2.example:8080")
        # a new password replaces it
        await self.put(rid, {"proxy": "http://corp:n3w@proxy2.example:8080"})
        self.assertEqual(self.stored(rid)["proxy"], "http://corp:n3w@proxy2.example:8080")
        # "" = direct; null = the default
        obj = await self.put(rid, {"proxy": ""})
        self.assertEqual((obj["proxy"], self.stored(rid)["proxy"]), ("", ""))
        obj = await self.put(rid, {"proxy": None})
        self.assertIsNone(obj["proxy"])
        self.assertIsNone(self.stored(rid)["proxy"])
        # nothing stored to keep: a masked password is refused
        await self.put(rid, {"proxy": "http://corp:****@proxy.example:3128"}, 400)

    @coro
    async def test_client_key_cleared_and_replaced(self):
        made = await self.create(client_cert=self.pki.client.cert_pem, client_key=self.pki.client.key_pem)
        rid = made["id"]
        # the key alone cannot go: the certificate needs it
        obj = await self.put(rid, {"client_key": ""}, 400)
        self.assertIn("client_key", obj["fields"])
        obj = await self.put(rid, {"client_cert": "", "client_key": ""})
        self.assertEqual((obj["client_cert"], obj["has_client_key"]), ("", False))
        self.assertEqual(self.stored(rid)["client_key"], "")
        obj = await self.put(rid, {"client_cert": self.pki.client.cert_pem, "client_key": self.pki.client.key_pem})
        self.assertIs(obj["has_client_key"], True)

    @coro
    async def test_tls_verify_and_server_name(self):
        made = await self.create(tls_verify=False, server_name="Registry.Test")
        self.assertIs(made["tls_verify"], False)
        self.assertIs(self.stored(made["id"])["tls_verify"], False)
        obj = await self.put(made["id"], {"tls_verify": True, "server_name": ""})
        self.assertEqual((obj["tls_verify"], obj["server_name"]), (True, ""))

    # --- bad input -------------------------------------------------------------------------

    @coro
    async def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(self):
        made = await self.create(client_cert=self.pki.client.cert_pem, client_key=self.pki.client.key_pem)
        path = f"/api/registries/{made['id']}"
        bad = [
            ("proxy", 3128),
            ("proxy", "ftp://proxy.example:21"),
            ("proxy", "https://proxy.example:443"),
            ("proxy", "proxy.example:3128"),
            ("proxy", "http://:3128"),
            ("proxy", "http://proxy.example:99999"),
            ("proxy", "http://proxy.example:3128/path"),
            ("proxy", "http://proxy.example:3128?x=1"),
            ("proxy", "http://pro xy.example:3128"),
            ("proxy", "http://u:SECRET@proxy\n.example:3128"),
            ("proxy", "socks5://" + "u" * 300 + ":SECRET@proxy.example:1080"),  # refused by the agents
            ("tls_verify", "false"),
            ("tls_verify", 0),
            ("ca", "not a certificate"),
            ("ca", self.pki.client.key_pem),
            ("ca", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            ("ca", ["x"]),
            ("ca", "x" * 60_000),
            ("client_cert", "garbage"),
            ("client_key", "garbage"),
            ("client_key", self.pki.encrypted_key()),
            ("client_key", self.pki.server.key_pem),  # not the certificate's key
            ("server_name", "bad name!"),
            ("server_name", "-x.example"),
            ("server_name", 5),
        ]
        for field, value in bad:
            for method, url in (("PUT", path), ("POST", "/api/registries")):
                body = {field: value} if method == "PUT" else {"name": "New", "url": "https://n.example",
                                                              "client_cert": self.pki.client.cert_pem,
                                                              "client_key": self.pki.client.key_pem, field: value}
                before = self.db.snapshot()
                code, _h, obj = await self.call(method, url, body)
                self.assertEqual(code, 400, (method, field, repr(value)[:80], obj))
                self.assertIn(field, obj["fields"], (method, field, obj))
                self.assertNotIn("SECRET", repr(obj))
                for pem in (self.pki.client.key_pem, self.pki.server.key_pem):
                    self.assertNotIn(pem.splitlines()[1], repr(obj))  # no key material
                self.assertEqual(self.db.snapshot(), before)
        # a bundle larger than a request may be
        code, _h, obj = await self.call("PUT", path, {"ca": "x" * 70_000})
        self.assertEqual(code, 413)
        # the certificate alone, or the key alone, on create
        for only in ({"client_cert": self.pki.client.cert_pem}, {"client_key": self.pki.client.key_pem}):
            code, _h, obj = await self.call("POST", "/api/registries",
                                            {"name": "Half", "url": "https://h.example", **only})
            self.assertEqual(code, 400, obj)
            self.assertTrue({"client_cert", "client_key"} & set(obj["fields"]))
        # a masked proxy password with nothing stored
        code, _h, obj = await self.call("POST", "/api/registries", {"name": "M", "url": "https://m.example",
                                                                    "proxy": "http://u:****@p.example:3128"})
        self.assertEqual(code, 400, obj)
        self.assertIn("proxy", obj["fields"])

    @coro
    async def test_messages_name_the_field_once(self):
        """A reason that names the field itself ("proxy URL ...") is not prefixed again."""
        for value, reason in (("http://proxy.example:99999", "proxy URL has an invalid host or port"),
                              ("ftp://proxy.example:21",
                               "proxy URL scheme 'ftp' is not supported (http, socks5, socks5h)"),
                              (3128, "must be a string")):
            code, _h, obj = await self.call("POST", "/api/registries",
                                            {"name": "P", "url": "https://p.example", "proxy": value})
            self.assertEqual(code, 400, obj)
            self.assertEqual(obj["fields"], {"proxy": reason})
            self.assertEqual(obj["error"], "invalid input: " + (reason if reason.startswith("proxy")
                                                                else "proxy " + reason))
        code, _h, obj = await self.call("POST", "/api/registries", {"name": "C", "url": "https://c.example",
                                                                    "ca": "x", "server_name": "bad name!"})
        self.assertEqual(code, 400, obj)
        self.assertNotIn("ca ca", obj["error"])
        self.assertNotIn("server_name server_name", obj["error"])

    # --- test before saving ------------------------------------------------------------------

    @coro
    async def test_unsaved_registry_is_probed_with_its_settings(self):
        body = {"url": "https://new.example", "username": "bot", "password": "pw",
                "proxy": "socks5h://u:tunnel-pw@127.0.0.1:1080", "tls_verify": False}
        writes = self.db.writes
        code, _h, obj = await self.call("POST", "/api/registries/test", body)
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj["steps"], [])
        self.assertEqual(self.db.writes, writes)  # nothing saved
        [row] = self.upstreams.probes
        self.assertEqual((row["url"], row["password"], row["proxy"], row["tls_verify"], row["client_key"]),
                         ("https://new.example", "pw", "socks5h://u:tunnel-pw@127.0.0.1:1080", False, ""))
        self.assertEqual(row["id"], 0)

    @coro
    async def test_unsaved_changes_of_a_saved_registry_use_the_stored_secrets(self):
        made = await self.create(proxy="http://corp:Pr0xy-pw@proxy.example:3128", password="upw",
                                 client_cert=self.pki.client.cert_pem, client_key=self.pki.client.key_pem)
        body = {"id": made["id"], "url": "https://changed.example", "proxy": made["proxy"]}
        code, _h, obj = await self.call("POST", "/api/registries/test", body)
        self.assertEqual(code, 200, obj)
        row = self.upstreams.probes[-1]
        self.assertEqual((row["id"], row["url"], row["password"], row["proxy"]),
                         (made["id"], "https://changed.example", "upw", "http://corp:Pr0xy-pw@proxy.example:3128"))
        self.assertEqual(row["client_key"].strip(), self.pki.client.key_pem.strip())
        _c, _h, stored = await self.call("GET", f"/api/registries/{made['id']}")
        self.assertEqual(stored["url"], "https://registry.internal:5000")  # not saved

    @coro
    async def test_unsaved_test_errors(self):
        self.assertError(await self.call("POST", "/api/registries/test", {"name": "x"}), 400, "url")
        self.assertError(await self.call("POST", "/api/registries/test", {"url": "ftp://x"}), 400, "url")
        self.assertError(await self.call("POST", "/api/registries/test",
                                         {"url": "https://x.example", "ca": "junk"}), 400, "ca")
        self.assertError(await self.call("POST", "/api/registries/test", {"id": 4242}), 404)
        self.assertError(await self.call("POST", "/api/registries/test", raw=b"[1]"), 400)
        self.client = self.stub(self.make_api(upstreams=None))
        self.assertError(await self.call("POST", "/api/registries/test", {"url": "https://x.example"}), 503)

    @coro
    async def test_steps_are_passed_on_and_cleaned(self):
        self.upstreams.probe_result = {
            "ok": False, "error": "certificate verify failed: self-signed certificate", "steps": [
                {"step": "dns", "ok": True, "ms": 1.234, "detail": "127.0.0.1"},
                {"step": "tcp", "ok": True, "ms": 0.5, "detail": "connected", "extra": 1},
                {"step": "bogus", "ok": True},
                {"step": "tls", "ok": False, "ms": None, "detail": "certificate verify failed: self-signed"},
                {"step": "v2", "ok": True, "ms": 3, "detail": "never reached"},
            ]}
        code, _h, obj = await self.call("POST", "/api/registries/test", {"url": "https://x.example"})
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj["steps"], [
            {"step": "dns", "ok": True, "ms": 1.2, "detail": "127.0.0.1"},
            {"step": "tcp", "ok": True, "ms": 0.5, "detail": "connected"},
            {"step": "tls", "ok": False, "ms": None, "detail": "certificate verify failed: self-signed"},
        ])
        code, _h, obj = await self.call("POST", "/api/registries/1/test")
        self.assertEqual(len(obj["steps"]), 3)


class ProbeStepsTests(unittest.TestCase):
    def test_shapes(self):
        self.assertEqual(probe_steps(None), [])
        self.assertEqual(probe_steps("x"), [])
        self.assertEqual(probe_steps([{"step": "v2", "ok": 1, "ms": True, "detail": None}]),
                         [{"step": "v2", "ok": False, "ms": None, "detail": ""}])


# the same tests against a real PostgreSQL (tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

RegistrySettingsPostgresTests = on_postgresql(RegistrySettingsTests)


class HandWrittenRowTests(AdminTestMixin, unittest.TestCase):
    """A proxy value written into the table by hand is shown as the agents read it
    (without a scheme: http), its password masked, or not at all if it is no
    proxy URL (it might hold a password anywhere); never a 500."""

    @coro
    async def test_odd_stored_proxies(self):
        for stored, shown in (("user:SECRET@host:3128", "http://user:****@host:3128"),
                              ("http://u:SECRET@[::1", "(invalid proxy URL)"),
                              ("http://u:SECRET@h:3128", "http://u:****@h:3128")):
            self.db.conn.execute("UPDATE registries SET proxy = ? WHERE id = 1", (stored,))
            code, _h, obj = await self.call("GET", "/api/registries/1")
            self.assertEqual(code, 200, obj)
            self.assertEqual(obj["proxy"], shown)
            self.assertNotIn("SECRET", repr(obj))
