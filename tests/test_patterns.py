"""Repository patterns (zmirror/oci/patterns.py): examples and properties."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from zmirror.oci.names import Repo
from zmirror.oci.patterns import (EVERYTHING, PatternError, parse_ref_pattern, parse_repo_pattern,
                                  split_name)

DIGEST = "sha256:" + "ab" * 32


class ExampleTests(unittest.TestCase):
    def test_literal_and_library_rule_on_docker_hub(self):
        for raw in ("nginx", "library/nginx", "docker.io/nginx", "index.docker.io/library/nginx"):
            p = parse_repo_pattern(raw)
            self.assertEqual(p.text, "library/nginx", raw)
            self.assertTrue(p.literal)
            self.assertTrue(p.matches("library/nginx"))
            self.assertFalse(p.matches("library/nginx2"))
            self.assertFalse(p.matches("nginx/nginx"))

    def test_library_rule_only_on_docker_hub(self):
        p = parse_repo_pattern("ghcr.io/nginx")
        self.assertEqual(p.text, "ghcr.io/nginx")
        self.assertTrue(p.matches("ghcr.io/nginx"))
        self.assertFalse(p.matches("ghcr.io/library/nginx"))
        star = parse_repo_pattern("*")
        self.assertEqual(star.text, "library/*")
        self.assertTrue(star.matches("library/redis"))
        self.assertFalse(star.matches("bitnami/redis"))
        self.assertFalse(star.matches("ghcr.io/redis"))

    def test_star_stays_in_one_component(self):
        p = parse_repo_pattern("docker.io/library/*")
        self.assertTrue(p.matches("library/nginx"))
        self.assertFalse(p.matches("library/a/b"))
        self.assertTrue(parse_repo_pattern("bitnami/post*").matches("bitnami/postgresql"))
        self.assertFalse(parse_repo_pattern("bitnami/post*").matches("bitnami/redis"))

    def test_double_star_is_one_or_more_components(self):
        p = parse_repo_pattern("ghcr.io/myorg/**")
        self.assertTrue(p.matches("ghcr.io/myorg/a"))
        self.assertTrue(p.matches("ghcr.io/myorg/a/b/c"))
        self.assertFalse(p.matches("ghcr.io/myorg"))
        self.assertFalse(p.matches("ghcr.io/myorgx/a"))
        self.assertFalse(p.matches("ghcr.io/other/myorg/a"))
        mid = parse_repo_pattern("ghcr.io/o/**/img")
        self.assertTrue(mid.matches("ghcr.io/o/x/img"))
        self.assertTrue(mid.matches("ghcr.io/o/x/y/img"))
        self.assertFalse(mid.matches("ghcr.io/o/img"))

    def test_namespace_is_matched_whole(self):
        p = parse_repo_pattern("ghcr.io/**")
        self.assertTrue(p.matches("ghcr.io/a/b"))
        self.assertFalse(p.matches("ghcr.io.example.com/a"))
        self.assertFalse(p.matches("quay.io/a"))
        self.assertFalse(p.matches("library/nginx"))
        hub = parse_repo_pattern("docker.io/**")
        self.assertTrue(hub.matches("library/nginx"))
        self.assertTrue(hub.matches("user/img"))
        self.assertFalse(hub.matches("ghcr.io/user/img"))
        self.assertTrue(parse_repo_pattern("registry:5000/**").matches("registry:5000/x"))
        self.assertFalse(parse_repo_pattern("registry:5000/**").matches("registry:5001/x"))

    def test_repo_objects(self):
        self.assertTrue(parse_repo_pattern("ghcr.io/o/*").matches(Repo("ghcr.io", "o/img")))
        self.assertTrue(parse_repo_pattern("nginx").matches(Repo("docker.io", "nginx")))
        self.assertEqual(split_name(Repo("quay.io", "a/b")), ("quay.io", "a/b"))
        self.assertEqual(split_name("library/x"), ("docker.io", "library/x"))
        self.assertEqual(split_name("localhost/x"), ("localhost", "x"))

    def test_everything(self):
        p = parse_repo_pattern("**")
        self.assertEqual(p.text, EVERYTHING)
        for name in ("library/nginx", "ghcr.io/a/b/c", "registry:5000/x"):
            self.assertTrue(p.matches(name))

    def test_case(self):
        self.assertEqual(parse_repo_pattern("GHCR.IO/team/*").text, "ghcr.io/team/*")
        with self.assertRaises(PatternError) as e:
            parse_repo_pattern("ghcr.io/Team/*")
        self.assertIn("lower case", str(e.exception))
        p = parse_ref_pattern("library/nginx:Latest")
        self.assertTrue(p.matches("library/nginx", tag="Latest"))
        self.assertFalse(p.matches("library/nginx", tag="latest"))

    def test_invalid(self):
        for raw, why in [("", "empty"), ("  ", "empty"), (3, "string"), ("a//b", "empty component"),
                         ("*.io/x", "host"), ("ghcr.io/a**/b", "whole component"),
                         ("docker.io/ghcr.io/x", "two registry hosts"), ("a/b$", "component"),
                         ("x" * 500, "at most"), ("ghcr.io:99999/x", "port")]:
            with self.assertRaises(PatternError, msg=raw) as e:
                parse_repo_pattern(raw)
            self.assertIn(why, str(e.exception), raw)
        for raw, why in [("nginx@sha256:12", "digest"), ("nginx:", "tag"), (":latest", "repository"),
                         ("nginx:a/b", "host"), ("nginx:" + "a" * 200, "tag")]:
            with self.assertRaises(PatternError, msg=raw) as e:
                parse_ref_pattern(raw)
            self.assertIn(why, str(e.exception), raw)

    def test_tags_and_digests(self):
        latest = parse_ref_pattern("*:latest")
        self.assertEqual(latest.text, "library/*:latest")
        self.assertTrue(latest.matches("library/nginx", tag="latest"))
        self.assertFalse(latest.matches("library/nginx", tag="1.27"))
        self.assertFalse(latest.matches("library/nginx", digest=DIGEST))  # a tag rule needs a tag
        any_latest = parse_ref_pattern("docker.io/**:latest")
        self.assertTrue(any_latest.matches("bitnami/redis", tag="latest"))
        glob = parse_ref_pattern("library/python:3.13-*")
        self.assertTrue(glob.matches("library/python", tag="3.13-slim"))
        self.assertFalse(glob.matches("library/python", tag="3.12-slim"))
        pinned = parse_ref_pattern(f"library/nginx@{DIGEST}")
        self.assertEqual(pinned.text, f"library/nginx@{DIGEST}")
        self.assertTrue(pinned.matches("library/nginx", digest=DIGEST))
        self.assertTrue(pinned.matches("library/nginx", tag="1.27", digest=DIGEST))
        self.assertFalse(pinned.matches("library/nginx", tag="1.27"))
        self.assertFalse(pinned.matches("library/redis", digest=DIGEST))
        port = parse_ref_pattern("registry:5000/img:v1")
        self.assertEqual((port.repo.text, port.tag), ("registry:5000/img", "v1"))
        self.assertIsNone(parse_ref_pattern("registry:5000/img").tag)


# -- properties ---------------------------------------------------------------------

_word = st.from_regex(r"\A[a-z0-9]{1,3}(?:[_-][a-z0-9]{1,2})?\Z")  # no "." : a first component with one is a host
_ns = st.sampled_from(["docker.io", "ghcr.io", "quay.io", "registry:5000", "ghcr.io.example.com"])
_names = st.builds(lambda ns, parts: (ns, parts), _ns, st.lists(_word, min_size=1, max_size=4))


def _canonical(ns: str, parts: list[str]) -> str:
    if ns == "docker.io":
        return "/".join(["library"] + parts) if len(parts) == 1 else "/".join(parts)
    return ns + "/" + "/".join(parts)


def _glob(word: str, draw_star: int) -> str:
    """``word`` with some of its characters replaced by '*' (0: none; 1: a prefix glob; 2: all)."""
    if draw_star == 0:
        return word
    if draw_star == 1:
        return word[:1] + "*"
    return "*"


@st.composite
def _patterns(draw):
    ns = draw(_ns)
    parts = draw(st.lists(_word, min_size=1, max_size=3))
    comps = []
    for w in parts:
        kind = draw(st.integers(0, 3))
        comps.append("**" if kind == 3 else _glob(w, kind))
    return ns, comps


def _reference(ns: str, comps: list[str], name: str) -> bool:
    """Matching spelled out component by component (no regexes over the whole name)."""
    from fnmatch import fnmatchcase
    if ns == "docker.io" and len(comps) == 1 and comps[0] != "**":
        comps = ["library"] + comps
    first, _, rest = name.partition("/")
    name_ns, path = (first, rest) if ("." in first or ":" in first or first == "localhost") and rest \
        else ("docker.io", name)
    if name_ns != ns:
        return False
    parts = path.split("/")

    def go(i: int, j: int) -> bool:
        if i == len(comps):
            return j == len(parts)
        if comps[i] == "**":
            return any(go(i + 1, k) for k in range(j + 1, len(parts) + 1))
        if j == len(parts):
            return False
        # '*' only: no '?' or '[' in the grammar, so fnmatch reads the component as we do
        return fnmatchcase(parts[j], comps[i]) and go(i + 1, j + 1)

    return go(0, 0)


class PropertyTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(_patterns(), _names)
    def test_same_as_component_by_component(self, pat, name):
        ns, comps = pat
        raw = "/".join(comps) if ns == "docker.io" else ns + "/" + "/".join(comps)
        if ns == "docker.io" and comps == ["**"]:
            raw = "docker.io/**"
        p = parse_repo_pattern(raw)
        canonical = _canonical(*name)
        self.assertEqual(p.matches(canonical), _reference(ns, comps, canonical), (raw, canonical))

    @settings(max_examples=300, deadline=None)
    @given(_names, _names)
    def test_a_literal_pattern_names_one_repository(self, a, b):
        p = parse_repo_pattern(_canonical(*a))
        self.assertTrue(p.literal)
        self.assertEqual(p.matches(_canonical(*b)), _canonical(*a) == _canonical(*b))

    @settings(max_examples=300, deadline=None)
    @given(_patterns(), _names)
    def test_no_pattern_grants_beyond_itself(self, pat, name):
        ns, comps = pat
        raw = ns + "/" + "/".join(comps)
        p = parse_repo_pattern(raw)
        canonical = _canonical(*name)
        if not p.matches(canonical):
            return
        # inside its namespace ...
        self.assertEqual(split_name(canonical)[0], p.namespace)
        path = split_name(canonical)[1].split("/")
        pcomps = p.path.split("/")
        if "**" not in pcomps:
            # ... as many components as it has, its literal ones in their places
            self.assertEqual(len(path), len(pcomps))
            for got, want in zip(path, pcomps):
                if "*" not in want:
                    self.assertEqual(got, want)
                else:
                    self.assertTrue(re.fullmatch("[^/]*".join(map(re.escape, want.split("*"))), got))
        else:
            # ... starting with the literal components before its first '**'
            head = pcomps[:pcomps.index("**")]
            for got, want in zip(path, head):
                if "*" not in want:
                    self.assertEqual(got, want)
            self.assertGreater(len(path), len(head))

    @settings(max_examples=200, deadline=None)
    @given(_names, st.lists(_word, min_size=1, max_size=2))
    def test_star_is_within_double_star(self, name, prefix):
        ns = name[0]
        one = parse_repo_pattern(f"{ns}/{'/'.join(prefix)}/*")
        many = parse_repo_pattern(f"{ns}/{'/'.join(prefix)}/**")
        canonical = _canonical(*name)
        if one.matches(canonical):
            self.assertTrue(many.matches(canonical))
        deeper = f"{canonical}/x/y"
        if many.matches(canonical):
            self.assertTrue(many.matches(deeper))
            self.assertFalse(one.matches(deeper))

    @settings(max_examples=200, deadline=None)
    @given(_names, _names)
    def test_namespace_isolation(self, a, b):
        p = parse_repo_pattern(f"{a[0]}/**")
        self.assertEqual(p.matches(_canonical(*b)), a[0] == b[0])

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=60))
    def test_hostile_text_is_a_pattern_error_or_a_pattern(self, raw):
        try:
            p = parse_ref_pattern(raw)
        except PatternError as e:
            self.assertTrue(str(e))
            self.assertNotIn("\n", str(e))
        else:
            # what it printed parses back to itself
            self.assertEqual(parse_ref_pattern(p.text).text, p.text)
