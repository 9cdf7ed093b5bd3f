"""The whitelist matcher: component boundaries, library/, '*', input validation,
and property tests that no name trick makes the checked name differ from the fetched one."""

import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.fixtures.auth import make_env
from tests.fixtures.helpers import coro
from zmirror.auth.whitelist import (
    Entry,
    InvalidPrefix,
    Matcher,
    normalize_prefix,
    reference_match,
)
from zmirror.oci.errors import RegistryError
from zmirror.oci.reference import parse_name, parse_path


def matcher(*prefixes):
    return Matcher(Entry(i + 1, p) for i, p in enumerate(prefixes))


class MatcherTests(unittest.TestCase):
    def test_component_boundary(self):
        m = matcher("helloz")
        self.assertTrue(m.allows("helloz/nginx"))
        self.assertTrue(m.allows("helloz/a/b"))
        self.assertTrue(m.allows("library/helloz"))
        self.assertFalse(m.allows("hellozz/x"))
        self.assertFalse(m.allows("hello/z"))
        self.assertFalse(m.allows("x/helloz"))
        self.assertFalse(m.allows("library/hellozz"))

    def test_official_images(self):
        for entry in ("nginx", "library/nginx"):
            m = matcher(entry)
            self.assertTrue(m.allows(parse_name("nginx")), entry)
            self.assertTrue(m.allows("library/nginx"), entry)
            self.assertFalse(m.allows("library/nginx-extra"), entry)
            self.assertFalse(m.allows("library/ngin"), entry)
            self.assertFalse(m.allows("other/nginx"), entry)
        # a multi-component entry never gets the library/ expansion
        self.assertFalse(matcher("a/b").allows("library/a/b"))
        self.assertTrue(matcher("library").allows("library/anything"))

    def test_star_is_a_string_prefix(self):
        m = matcher("hello*")
        self.assertTrue(m.allows("hellozz/x"))
        self.assertTrue(m.allows("hello/x"))
        self.assertTrue(m.allows("library/hello-world"))
        self.assertFalse(m.allows("hell/x"))
        self.assertFalse(m.allows("x/hello"))
        m = matcher("team/a*")
        self.assertTrue(m.allows("team/abc"))
        self.assertTrue(m.allows("team/a/b"))
        self.assertFalse(m.allows("team/b"))
        self.assertFalse(m.allows("library/team/abc"))
        self.assertTrue(matcher("library/*").allows("library/alpine"))
        self.assertFalse(matcher("library/*").allows("libraryx/alpine"))

    def test_most_specific_entry_reported(self):
        m = Matcher([Entry(1, "a"), Entry(2, "a/b"), Entry(3, "a/b/c*")])
        self.assertEqual(m.match("a/b/cd").id, 3)
        self.assertEqual(m.match("a/b/x").id, 2)
        self.assertEqual(m.match("a/x").id, 1)
        self.assertIsNone(m.match("b/a"))
        self.assertIsNone(Matcher().match("library/nginx"))
        self.assertIsNone(m.match(""))

    def test_input_validation(self):
        for bad in ("", "   ", "*", "**", "a*b", "*a", "/a", "a//b", "A/b", "a/", "a/../b",
                    "a/./b", "a%2fb", "-a", "a/-b*", "a b", "a\nb", "x" * 300, None, 5, "a:b",
                    "a/b.-*", "é"):
            with self.assertRaises(InvalidPrefix, msg=repr(bad)):
                normalize_prefix(bad)
        for good in ("helloz", "library/nginx", "hello*", "a/b/c", "a.b_c__d--e", "a/*",
                     "hello-*", "hello_*", "hello__*", "a/b.*", "0"):
            self.assertEqual(normalize_prefix(good), good)
        self.assertEqual(normalize_prefix("  helloz \t"), "helloz")

    def test_newline_is_never_part_of_a_prefix(self):
        """``$`` would also match before a trailing newline: the patterns end in ``\\Z``."""
        from zmirror.auth.whitelist import _COMPONENT, _PARTIAL

        self.assertIsNone(_COMPONENT.match("helloz\n"))
        self.assertIsNone(_PARTIAL.match("helloz\n"))
        for bad in ("helloz\n/nginx", "library\n/nginx", "helloz\n*", "a/helloz\n*", "a/b\n/c"):
            with self.assertRaises(InvalidPrefix, msg=repr(bad)):
                normalize_prefix(bad)
        # surrounding whitespace typed by an admin is stripped: what is stored has no newline
        self.assertEqual(normalize_prefix("helloz\n"), "helloz")
        # and an entry holding one (written around the checks) matches no name
        m = matcher("helloz\n", "hello\n*")
        for name in ("helloz", "helloz/nginx", "library/helloz", "hello-world"):
            self.assertIsNone(m.match(name), name)


# --- property tests ---------------------------------------------------------

alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def components(draw):
    parts = [draw(alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts.append(draw(separator))
        parts.append(draw(alnum))
    return "".join(parts)


names = st.lists(components(), min_size=1, max_size=4).map("/".join)


@st.composite
def prefixes(draw):
    """Valid whitelist entries, often related to a name so that matches happen."""
    comps = draw(st.lists(components(), min_size=1, max_size=3))
    p = "/".join(comps)
    if draw(st.booleans()):
        cut = draw(st.integers(1, len(p)))
        p = p[:cut]
        if p.endswith("/"):
            p = p[:-1] or "a"
        try:
            return normalize_prefix(p + "*")
        except InvalidPrefix:
            return "/".join(comps) + "*"
    return p


noise = st.lists(
    st.sampled_from(list("abcz019./_-%:@?#;\\ A") + ["%2e", "%2f", "%2F", "%252e", "..", "//",
                                                     "\u2215", "\uff0e", "\x00", "library/"]),
    max_size=12,
).map("".join)


class PropertyTests(unittest.TestCase):
    @given(names, st.lists(prefixes(), max_size=5))
    @settings(max_examples=400, deadline=None)
    def test_matcher_agrees_with_the_rule(self, raw, entries):
        name = parse_name(raw)
        m = Matcher(Entry(i, p) for i, p in enumerate(entries))
        expected = any(reference_match(p, name) for p in entries)
        self.assertEqual(m.allows(name), expected, (name, entries))

    @given(names, components())
    @settings(max_examples=300, deadline=None)
    def test_component_entries_respect_boundaries(self, raw, comp):
        name = parse_name(raw)
        m = matcher(comp)
        first = name.split("/")
        allowed = first[0] == comp or (first[0] == "library" and first[1] == comp)
        self.assertEqual(m.allows(name), allowed, (name, comp))
        # a longer first component with the same start never matches
        self.assertFalse(m.allows(comp + "x/" + name))

    @given(noise, noise)
    @settings(max_examples=500, deadline=None)
    def test_parsed_name_is_exactly_the_raw_components(self, left, right):
        """Whatever the path holds, a name that parses is the raw text itself (no decoding),
        so the matcher sees the same string the proxy fetches."""
        raw_name = f"{left}helloz{right}"
        try:
            path = parse_path(f"/v2/{raw_name}/manifests/latest")
        except RegistryError:
            return
        self.assertEqual(path.name, raw_name if "/" in raw_name else "library/" + raw_name)
        self.assertNotIn("..", path.name.split("/"))
        self.assertNotIn("%", path.name)
        self.assertEqual(path.name, path.name.lower())
        self.assertEqual(matcher("helloz").allows(path.name),
                         reference_match("helloz", path.name))


class RoutesPropertyTests(unittest.TestCase):
    """Through the real routes and policy: the proxy only ever fetches a name the
    policy allowed, and that name is the one the policy checked."""

    @coro
    async def setUp(self):
        self.env = make_env(self)
        await self.env.whitelists.create("helloz")
        await self.env.whitelists.create("nginx")

    @given(noise, noise, st.sampled_from(["manifests/latest", "tags/list",
                                         "blobs/sha256:" + "a" * 64]))
    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    def test_only_allowed_names_are_fetched(self, left, right, tail):
        env = self.env
        from urllib.parse import quote, unquote_to_bytes

        raw = f"{left}helloz{right}"
        before = len(env.proxy.pulls)
        path = quote(raw, safe="/%:@.-_")
        try:
            # Klein itself answers 400 (and logs an error) for paths that are not UTF-8
            # after percent-decoding, before any route runs; that is not what is tested here.
            unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            assume(False)
        url = "http://mirror/v2/" + path + "/" + tail
        resp, body = _sync_get(env.client, url)
        self.assertNotEqual(resp.code, 500, body)
        if len(env.proxy.pulls) > before:
            fetched = env.proxy.pulls[-1].path.name
            self.assertTrue(env.whitelist.matcher.allows(fetched), fetched)
            self.assertEqual(json.loads(body)["fetched"], fetched)
            self.assertEqual(resp.code, 200)
        else:
            self.assertIn(resp.code, (400, 401, 404, 405), body)


def _sync_get(client, url):
    """A request whose handling needs no thread (anonymous: the whitelist is in memory)."""
    d = client.get(url)
    client.flush()
    resp = _result(d)
    c = client.content(resp)
    client.flush()
    return resp, _result(c)


def _result(d):
    out = []
    d.addBoth(out.append)
    if not out:
        raise AssertionError("request did not complete synchronously")
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]
