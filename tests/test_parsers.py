"""Property tests for the parsers every decision rests on."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from zmirror.registry.errors import RegistryError
from zmirror.registry.reference import BLOB, MANIFEST, TAGS, parse_name, parse_path
from zmirror.upstream.auth import parse_www_authenticate

alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
separator = st.sampled_from([".", "_", "__", "-", "--"])
component = st.builds(lambda first, rest: first + "".join(s + a for s, a in rest),
                      alnum, st.lists(st.tuples(separator, alnum), max_size=3))
name = st.lists(component, min_size=1, max_size=4).map("/".join).filter(lambda n: len(n) <= 200)
tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}\Z")
digest = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)


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
