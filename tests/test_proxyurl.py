"""Egress proxy URLs and no_proxy lists (zmirror/config/proxyurl.py): read
leniently as the environment gives them (curl's reading), strictly as the
configuration and the admin API take them; masked, and a masked password
resolved to the stored one."""

from __future__ import annotations

from twisted.trial import unittest

from zmirror.config.proxyurl import (INVALID, NoProxy, ProxyURL, check_no_proxy, check_proxy_url, mask_proxy_url,
                                     parse_proxy, proxy_password, with_proxy_password)


class ParseProxy(unittest.TestCase):
    def test_schemes_ports_and_credentials(self):
        p = parse_proxy("http://us%40er:pa%3Ass@Proxy.Example:3128")
        self.assertEqual(p, ProxyURL("http", "proxy.example", 3128, "us@er", "pa:ss"))
        self.assertEqual(parse_proxy("socks5h://10.0.0.1:1081").scheme, "socks5h")
        self.assertEqual(parse_proxy("socks5://[::1]:1081").host, "::1")
        self.assertEqual(parse_proxy("socks5://[::1]:1081").netloc, "[::1]:1081")
        # no scheme: an HTTP proxy; no port: 1080 (curl's default for every proxy scheme)
        self.assertEqual(parse_proxy("proxy.example"), ProxyURL("http", "proxy.example", 1080))
        self.assertEqual(parse_proxy("proxy.example:8080/").port, 8080)
        self.assertEqual(parse_proxy("SOCKS5H://h").port, 1080)

    def test_masked(self):
        self.assertEqual(parse_proxy("http://u:secret@h:1").masked(), "http://u:****@h:1")
        self.assertEqual(parse_proxy("http://u@h:1").masked(), "http://u@h:1")
        self.assertEqual(parse_proxy("socks5h://h:1").masked(), "socks5h://h:1")
        self.assertEqual(mask_proxy_url("http://a%40b:secret@h:1"), "http://a%40b:****@h:1")
        self.assertEqual(mask_proxy_url(""), "")
        self.assertIsNone(mask_proxy_url(None))
        self.assertNotIn("secret", mask_proxy_url("ftp://u:secret@h:1"))
        self.assertNotIn("secret", repr(parse_proxy("http://u:secret@h:1")))

    def test_errors_are_clear_and_hold_no_credentials(self):
        cases = {
            "ftp://u:secret@h:1": "scheme 'ftp' is not supported",
            "https://u:secret@h:1": "https:// (TLS to the proxy) is not supported",
            "socks4://u:secret@h:1": "scheme 'socks4' is not supported",
            "http://u:secret@h:99999": "invalid host or port",
            "http://u:secret@h:x": "invalid host or port",
            "http://u:secret@:1": "no host",
            "http://u:secret@h:1/path": "has a path",
            "http://u:secret@h:1?q": "has a path",
            "http://u:sec ret@h:1": "spaces",
            "": "empty",
            "socks5://" + "u" * 256 + ":secret@h:1": "255 bytes",
        }
        for url, message in cases.items():
            with self.assertRaises(ValueError, msg=url) as e:
                parse_proxy(url)
            self.assertIn(message, str(e.exception), url)
            self.assertNotIn("secret", str(e.exception))


class NoProxyMatching(unittest.TestCase):
    def test_names_and_domains(self):
        n = NoProxy.parse("example.com, .corp.test *.svc.local,Localhost.")
        for host in ("example.com", "a.example.com", "EXAMPLE.COM.", "corp.test", "x.corp.test",
                     "a.b.svc.local", "svc.local", "localhost"):
            self.assertTrue(n.matches(host, 443), host)
        for host in ("notexample.com", "example.com.evil", "corp.test2", "10.0.0.1"):
            self.assertFalse(n.matches(host, 443), host)

    def test_ips_cidrs_and_ports(self):
        n = NoProxy.parse("10.0.0.0/8,192.168.1.5 ::1, [fd00::]/8 registry.test:5000 127.0.0.1:8080")
        self.assertTrue(n.matches("10.1.2.3", 443))
        self.assertTrue(n.matches("192.168.1.5", 80))
        self.assertFalse(n.matches("192.168.1.6", 80))
        self.assertTrue(n.matches("::1", 443))
        self.assertTrue(n.matches("[::1]", 443))
        self.assertTrue(n.matches("fd12::1", 443))
        self.assertTrue(n.matches("registry.test", 5000))
        self.assertFalse(n.matches("registry.test", 443))
        self.assertTrue(n.matches("127.0.0.1", 8080))
        self.assertFalse(n.matches("127.0.0.1", 8081))
        self.assertFalse(n.matches("11.0.0.1", 443))  # names are never resolved: IPs match IP entries only

    def test_star_and_empty(self):
        self.assertTrue(NoProxy.parse("*").matches("anything.example", 1))
        self.assertFalse(NoProxy.parse("").matches("anything.example", 1))
        self.assertFalse(NoProxy.parse(" , ,"))


class StrictProxyURL(unittest.TestCase):
    """``check_proxy_url``: the configuration's and the admin API's form."""

    def test_normal_form(self):
        cases = {
            " HTTP://u:p%40ss@Proxy.Example:3128/ ": "http://u:p%40ss@proxy.example:3128",
            "http://proxy": "http://proxy:1080",  # the port the agents use, written out
            "socks5h://user:pw@tunnel.example:1080": "socks5h://user:pw@tunnel.example:1080",
            "socks5://[::1]:1081": "socks5://[::1]:1081",
            "http://u:p!w@h:1": "http://u:p%21w@h:1",  # credentials percent-encoded
            "http://u@h:1": "http://u@h:1",
            "": "",
            "  ": "",
        }
        for value, normal in cases.items():
            self.assertEqual(check_proxy_url(value), normal, value)
            if normal:
                self.assertEqual(check_proxy_url(normal), normal)
                self.assertEqual(parse_proxy(normal), parse_proxy(value))

    def test_stricter_than_the_environment(self):
        # what the environment may say (curl's reading) but a setting may not
        for lenient in ("proxy.example:3128", "u:SECRET@proxy.example:3128", "http://h:1?", "http://h:1#",
                        "http://h\\x:1"):
            parse_proxy(lenient)
            with self.assertRaises(ValueError, msg=lenient) as e:
                check_proxy_url(lenient)
            self.assertNotIn("SECRET", str(e.exception))
        self.assertEqual(parse_proxy("http://" + "h" * 3000 + ":1").port, 1)
        with self.assertRaises(ValueError) as e:
            check_proxy_url("http://" + "h" * 3000 + ":1")
        self.assertIn("at most 2048", str(e.exception))

    def test_errors_never_repeat_the_value(self):
        for bad in ("ftp://u:SECRET@h:21", "https://u:SECRET@h:443", "u:SECRET@host:3128", "http://u:SECRET@h:99999",
                    "http://u:SECRET@:3128", "http://u:SECRET@h:3128/path", "http://u:SECRET@h:3128?x=1",
                    "http://u:SECRET@h 1:3128", "http://u:SECRET@prøxy:1",
                    "socks5://" + "u" * 256 + ":SECRET@h:1"):
            with self.assertRaises(ValueError, msg=bad) as e:
                check_proxy_url(bad)
            self.assertNotIn("SECRET", str(e.exception))
            self.assertNotIn("\n", str(e.exception))
        for bad in (3128, None, True, ["http://h:1"]):
            with self.assertRaises(ValueError):
                check_proxy_url(bad)


class Passwords(unittest.TestCase):
    def test_masked_and_kept(self):
        self.assertEqual(mask_proxy_url("http://corp:Pr0xy-pw@proxy.example:3128"), "http://corp:****@proxy.example:3128")
        # a row written by hand is shown as the agents read it, or not at all
        self.assertEqual(mask_proxy_url("user:SECRET@host:3128"), "http://user:****@host:3128")
        self.assertEqual(mask_proxy_url("http://u:SECRET@[::1"), INVALID)
        self.assertEqual(proxy_password("http://u:p%40ss@h:1"), "p@ss")
        self.assertEqual((proxy_password("http://u@h:1"), proxy_password(""), proxy_password(None)), ("", "", ""))
        self.assertEqual(proxy_password("http://u:SECRET@[::1"), "")
        shown = mask_proxy_url("http://a%40b:p%3Ass@h:1")
        self.assertEqual(shown, "http://a%40b:****@h:1")
        self.assertEqual(proxy_password(shown), "****")
        kept = with_proxy_password(shown, proxy_password("http://a%40b:p%3Ass@h:1"))
        self.assertEqual(kept, "http://a%40b:p%3Ass@h:1")
        self.assertEqual(parse_proxy(kept), ProxyURL("http", "h", 1, "a@b", "p:ss"))


class StrictNoProxy(unittest.TestCase):
    """``check_no_proxy`` / ``NoProxy.parse(strict=True)``: the configuration's
    form; the environment's lists are read as they are."""

    def test_normal_form(self):
        self.assertEqual(check_no_proxy("Localhost, .corp.example  10.0.0.0/8,[::1]:5000 *.svc.local, , "),
                         "localhost,.corp.example,10.0.0.0/8,[::1]:5000,*.svc.local")
        self.assertEqual(check_no_proxy("*"), "*")
        self.assertEqual(check_no_proxy(""), "")
        self.assertEqual(check_no_proxy("registry.test:5000 127.0.0.1:8080 [fd00::]/8 fe80::1%eth0 host."),
                         "registry.test:5000,127.0.0.1:8080,[fd00::]/8,fe80::1%eth0,host.")
        strict = NoProxy.parse("example.com, .corp.test *.svc.local,10.0.0.0/8", strict=True)
        self.assertEqual(strict, NoProxy.parse("example.com, .corp.test *.svc.local,10.0.0.0/8"))

    def test_junk_is_refused_strictly_and_passed_over_leniently(self):
        for junk in ("host;rm", "a\x00b", "a/b", "10.0.0.0/33", "*foo.example", "foo*.example", "[foo]",
                     "host:99999", "host:0", "host:abc", "a..b", "x" * 256, "ünï.example"):
            with self.assertRaises(ValueError, msg=junk) as e:
                check_no_proxy(f"ok.example, {junk}")
            self.assertNotIn("\n", str(e.exception))
            NoProxy.parse(f"ok.example, {junk}")  # the environment's: as before
        self.assertIn("is not a host name, domain, IP address or CIDR", str(self.refusal("a/b")))
        self.assertIn("at most 8192", str(self.refusal("a," * 5000)))
        for bad in (None, ["a"], 5):
            with self.assertRaises(ValueError):
                check_no_proxy(bad)

    def refusal(self, text):
        with self.assertRaises(ValueError) as e:
            NoProxy.parse(text, strict=True)
        return e.exception
