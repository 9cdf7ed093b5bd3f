"""Property tests for the parsers every decision rests on, and the regular expressions
that check upstream values."""

import json
import re

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from zmirror.oci.errors import RegistryError
from zmirror.oci.reference import BLOB, MANIFEST, TAGS, is_digest, parse_name, parse_path
from zmirror.upstream.auth import parse_www_authenticate

alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
separator = st.sampled_from([".", "_", "__", "-", "--"])
component = st.builds(lambda first, rest: first + "".join(s + a for s, a in rest),
                      alnum, st.lists(st.tuples(separator, alnum), max_size=3))
name = st.lists(component, min_size=1, max_size=4).map("/".join).filter(lambda n: len(n) <= 200)
tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}\Z")
digest = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)
# The spec's grammar, written out independently of the parser under test.
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
DIGEST_SHAPE_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")


class ReferenceProperties(unittest.TestCase):
    @given(name, tag)
    def test_valid_manifest_paths_parse(self, n, t):
        p = parse_path(f"/v2/{n}/manifests/{t}")
        self.assertEqual(p.kind, MANIFEST)
        self.assertEqual(p.reference, t)
        self.assertEqual(p.name, n if "/" in n else "library/" + n)

    @given(name, digest)
    def test_valid_blob_paths_parse(self, n, d):
        p = parse_path(f"/v2/{n}/blobs/{d}".encode())
        self.assertEqual((p.kind, p.reference), (BLOB, d))
        self.assertTrue(p.by_digest)

    @given(name)
    def test_tags(self, n):
        self.assertEqual(parse_path(f"/v2/{n}/tags/list").kind, TAGS)

    @given(st.text(max_size=80))
    def test_arbitrary_paths_never_crash(self, s):
        try:
            p = parse_path("/v2/" + s)
        except RegistryError as e:
            self.assertIn(e.status, (400, 404, 405))
        else:
            # whatever parses is on-grammar and contains no traversal or encoding
            self.assertNotIn("..", p.name)
            self.assertNotIn("%", p.name)
            self.assertEqual(parse_name(p.name), p.name)

    @given(name, st.sampled_from(["%2f", "%2F", "%2e", "%2E%2E", "%00", "/..", "/.", "//"]))
    def test_encoding_tricks_refused(self, n, trick):
        with self.assertRaises(RegistryError):
            parse_path(f"/v2/{n}{trick}x/manifests/latest")

    def test_invalid_manifest_reference_is_unknown_manifest(self):
        # The conformance suite's "nonexistent manifest": off the tag grammar, so no manifest has it.
        for path in ("/v2/conf/repo/manifests/.INVALID_MANIFEST_NAME", b"/v2/a/manifests/-bad",
                     "/v2/a/manifests/" + "t" * 129, "/v2/a/manifests/", "/v2/a/manifests/a:b:c",
                     "/v2/a/manifests/:x", "/v2/a/manifests/SHA256:" + "a" * 64):
            with self.assertRaises(RegistryError) as cm:
                parse_path(path)
            self.assertEqual((cm.exception.status, cm.exception.code), (404, "MANIFEST_UNKNOWN"), path)
            self.assertEqual(json.loads(cm.exception.body())["errors"][0]["code"], "MANIFEST_UNKNOWN")

    @given(name, st.text(max_size=40).filter(lambda r: "/" not in r and "%" not in r and "\\" not in r))
    def test_any_manifest_reference_parses_or_is_a_clean_error(self, n, ref):
        try:
            p = parse_path(f"/v2/{n}/manifests/{ref}")
        except RegistryError as e:
            if is_digest(ref) and DIGEST_SHAPE_RE.match(ref):
                self.assertEqual((e.status, e.code), (400, "DIGEST_INVALID"))
            else:
                self.assertEqual((e.status, e.code), (404, "MANIFEST_UNKNOWN"))
        else:
            self.assertEqual(p.reference, ref)
            self.assertTrue(TAG_RE.fullmatch(ref) or DIGEST_RE.fullmatch(ref), ref)

    def test_invalid_names_stay_name_invalid(self):
        # the name is checked before the reference: a bad name is NAME_INVALID whatever follows
        for path in ("/v2/A/manifests/.INVALID_MANIFEST_NAME", "/v2/a/../b/manifests/-x", "/v2/a//b/manifests/latest"):
            with self.assertRaises(RegistryError) as cm:
                parse_path(path)
            self.assertEqual((cm.exception.status, cm.exception.code), (400, "NAME_INVALID"), path)

    def test_bad_digests_stay_digest_invalid(self):
        for path in ("/v2/a/manifests/sha256:totallywrong", "/v2/a/manifests/sha384:" + "a" * 96,
                     "/v2/a/blobs/latest", "/v2/a/blobs/.INVALID"):
            with self.assertRaises(RegistryError) as cm:
                parse_path(path)
            self.assertEqual((cm.exception.status, cm.exception.code), (400, "DIGEST_INVALID"), path)

    def test_trailing_newline_is_not_on_grammar(self):
        # "$" in a Python regex also matches before a final "\n"; the parser must not accept one.
        for path, status in (("/v2/a/manifests/latest\n", 404), ("/v2/a\n/manifests/latest", 400),
                             ("/v2/a/blobs/sha256:" + "a" * 64 + "\n", 400)):
            with self.assertRaises(RegistryError) as cm:
                parse_path(path)
            self.assertEqual(cm.exception.status, status, repr(path))
        with self.assertRaises(RegistryError):
            parse_name("a\n")

    def test_length_limit(self):
        with self.assertRaises(RegistryError):
            parse_name("a" * 256)
        with self.assertRaises(RegistryError):
            parse_name("a" * 250)  # library/ prefix pushes it over 255


quoted_value = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\'),
                       max_size=30)


class ChallengeProperties(unittest.TestCase):
    def test_docker_hub(self):
        [c] = parse_www_authenticate(
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull,push"')
        self.assertEqual(c.scheme, "bearer")
        self.assertEqual(c.get("realm"), "https://auth.docker.io/token")
        self.assertEqual(c.get("scope"), "repository:library/nginx:pull,push")

    def test_multiple_challenges_and_token68(self):
        cs = parse_www_authenticate('Basic realm="a, b", Bearer realm="x",error="invalid_token"')
        self.assertEqual([c.scheme for c in cs], ["basic", "bearer"])
        self.assertEqual(cs[0].get("realm"), "a, b")
        self.assertEqual(cs[1].get("error"), "invalid_token")
        [c] = parse_www_authenticate("Basic dXNlcjpwYXNz")
        self.assertEqual(c.params[""], "dXNlcjpwYXNz")

    def test_escapes_and_unquoted(self):
        [c] = parse_www_authenticate(r'Bearer realm="a\"b",service=reg')
        self.assertEqual(c.get("realm"), 'a"b')
        self.assertEqual(c.get("service"), "reg")

    @settings(max_examples=200)
    @given(quoted_value, quoted_value, quoted_value)
    def test_roundtrip(self, realm, service, scope):
        header = f'Bearer realm="{realm}",service="{service}",scope="{scope}"'
        [c] = parse_www_authenticate(header)
        self.assertEqual((c.get("realm"), c.get("service"), c.get("scope")), (realm, service, scope))

    @given(st.text(max_size=60))
    def test_garbage_never_crashes(self, s):
        from zmirror.upstream.auth import ChallengeParseError

        try:
            out = parse_www_authenticate(s)
        except ChallengeParseError:
            return
        self.assertIsInstance(out, list)


class MergedAcceptTests(unittest.TestCase):
    """Accept lines are merged, and only well-formed media ranges go on to upstreams."""

    def accept(self, *lines: bytes) -> list:
        from twisted.web.test.requesthelper import DummyRequest

        from zmirror.registry.routes import merged_accept

        req = DummyRequest([b""])
        req.requestHeaders.setRawHeaders(b"accept", list(lines))
        return merged_accept(req)

    def test_merged_in_order_without_duplicates(self):
        self.assertEqual(
            self.accept(b"application/vnd.oci.image.manifest.v1+json, */*;q=0.5",
                        b"application/vnd.oci.image.manifest.v1+json", b"application/*"),
            ["application/vnd.oci.image.manifest.v1+json", "*/*;q=0.5", "application/*"])

    def test_junk_is_dropped(self):
        got = self.accept(b"\x80", b"a" * 300 + b"/b", b"text/plain; q=\x7f", b"/x", b"x/",
                          b"application/json", b"*/x")
        self.assertEqual(got, ["application/json"])

    def test_bounded(self):
        from zmirror.registry.routes import MAX_ACCEPT_ITEMS

        got = self.accept(b", ".join(b"a/t%d" % i for i in range(1000)))
        self.assertEqual(len(got), MAX_ACCEPT_ITEMS)


class TrailingNewlineTests(unittest.TestCase):
    """``$`` also matches before a final newline: the checks of upstream values use ``\\Z``."""

    def test_media_type_and_digest(self):
        from zmirror.oci.mediatypes import content_media_type, valid_media_type

        self.assertTrue(valid_media_type("application/json"))
        self.assertFalse(valid_media_type("application/json\n"))
        self.assertIsNone(content_media_type("application/json; charset=utf-8\n"))

    def test_tag_page_size(self):
        from zmirror.upstream.manifests import _DIGITS

        self.assertTrue(_DIGITS.match("5"))
        self.assertIsNone(_DIGITS.match("5\n"))

    def test_external_url(self):
        from zmirror.config import ConfigError
        from zmirror.config.parse import validate_external_url

        validate_external_url("server.external_url", "https://mirror.example.com")
        with self.assertRaises(ConfigError):
            validate_external_url("server.external_url", "https://mirror.example.com\n")
