"""The import arrows between layers point down only (docs/design/README.md).

- ``zmirror.oci`` (the registry vocabulary) and ``zmirror.identity`` import
  nothing of ZMirror outside themselves.
- ``zmirror.transfer`` (interfaces, ranges, transfer threads, follower) imports
  nothing of the upstream, cache or registry layers; ``zmirror.cache`` nothing
  of ``zmirror.upstream``; ``zmirror.upstream`` nothing of ``zmirror.registry``.
- ``zmirror.db`` (stores: rows) never imports ``zmirror.auth`` (policy):
  the stores hand rows to the policy, they do not run it.
- ``zmirror.auth`` never imports the HTTP routes (``zmirror.registry.routes``):
  ``Identity`` lives in ``zmirror.identity``, below both.
- ``zmirror.service``, ``zmirror.httpchannel`` and ``zmirror.metrics`` /
  ``zmirror.metricsendpoint`` import nothing of ``zmirror.admin``.
- No import circle anywhere in ``zmirror/``, a package's ``__init__`` and its
  own submodules included.

Checked on the source (every ``import`` statement anywhere in a module,
function-local ones included, relative ones resolved) and at run time (what
importing the lower layer really loads, in a fresh interpreter).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

import zmirror

PACKAGE = Path(zmirror.__file__).resolve().parent

# (modules under this package, may not import this module or anything under it)
FORBIDDEN = [
    ("zmirror.db", "zmirror.auth"),
    ("zmirror.auth", "zmirror.registry.routes"),
    ("zmirror.identity", "zmirror"),
    ("zmirror.transfer", "zmirror.upstream"),
    ("zmirror.transfer", "zmirror.cache"),
    ("zmirror.transfer", "zmirror.registry"),
    ("zmirror.cache", "zmirror.upstream"),
    ("zmirror.upstream", "zmirror.registry"),
    ("zmirror.config", "zmirror.upstream"),  # the settings' grammar (proxy URLs) is config's own
    ("zmirror.config", "zmirror.cache"),
    ("zmirror.service", "zmirror.admin"),
    ("zmirror.httpchannel", "zmirror.admin"),
    ("zmirror.metrics", "zmirror.admin"),
    ("zmirror.metricsendpoint", "zmirror.admin"),
    ("zmirror.sync", "zmirror.admin"),  # sync jobs: the admin routes call them, not the reverse
    ("zmirror.db", "zmirror.sync"),
]

# (package, may import nothing of zmirror outside itself)
SELF_CONTAINED = ["zmirror.oci", "zmirror.identity"]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_under(name: str) -> list[tuple[str, Path]]:
    rel = Path(*name.split("."))
    base = PACKAGE.parent / rel
    if base.is_dir():
        return sorted((module_name(p), p) for p in base.rglob("*.py"))
    return [(name, base.with_suffix(".py"))]


def from_base(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a ``from … import`` in module ``name`` imports from (relative
    imports resolved)."""
    if not node.level:
        return node.module or ""
    anchor = name.split(".")
    if not is_package:
        anchor = anchor[:-1]
    anchor = anchor[:len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_names(name: str, path: Path) -> set[str]:
    """Every module an ``import`` in ``path`` names (``from a import b`` gives
    ``a`` and ``a.b``: ``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = from_base(name, is_package, node)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def is_under(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def violations(lower: str, forbidden: str) -> list[str]:
    found = []
    for name, path in modules_under(lower):
        for imported in sorted(imported_names(name, path)):
            if is_under(imported, forbidden):
                found.append(f"{name} imports {imported}")
    return found


def all_modules() -> dict[str, Path]:
    return dict(modules_under("zmirror"))


def module_edges(name: str, path: Path, known: set[str]) -> set[str]:
    """The ZMirror modules ``path`` imports (function-local imports included):
    ``import a.b`` and ``from a import b`` name the module ``a.b`` when it is one,
    else the longest known module above it (``from zmirror.db import
    DatabaseError`` is the package ``zmirror.db`` itself).  The implicit import
    of a parent package by Python is not an edge: only what the source names is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"

    def longest(dotted: str) -> str:
        parts = dotted.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        return ".".join(parts)

    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(longest(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = from_base(name, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else longest(base))
    return {t for t in targets if t and t != name and is_under(t, "zmirror")}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: module_edges(name, path, known) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


class ImportArrowTests(unittest.TestCase):
    def test_the_checked_packages_exist(self):
        # a renamed package must not make the other tests pass vacuously
        for lower, _forbidden in FORBIDDEN:
            self.assertTrue(modules_under(lower), lower)
            for _name, path in modules_under(lower):
                self.assertTrue(path.is_file(), path)
        names = {n for n, _p in modules_under("zmirror.db")}
        self.assertTrue({"zmirror.db.users", "zmirror.db.whitelists"} <= names, names)

    def test_the_checker_sees_imports_of_every_form(self):
        src = ("import zmirror.auth.policy\n"
               "from zmirror.auth import whitelist\n"
               "def f():\n"
               "    from ..auth.passwords import Passwords\n"
               "    from . import errors\n")
        tmp = Path(self.mktemp())
        tmp.mkdir()
        path = tmp / "users.py"
        path.write_text(src, encoding="utf-8")
        names = imported_names("zmirror.db.users", path)
        for expected in ("zmirror.auth.policy", "zmirror.auth", "zmirror.auth.whitelist",
                         "zmirror.auth.passwords", "zmirror.auth.passwords.Passwords",
                         "zmirror.db", "zmirror.db.errors"):
            self.assertIn(expected, names)
        self.assertTrue(is_under("zmirror.auth.whitelist", "zmirror.auth"))
        self.assertFalse(is_under("zmirror.authx", "zmirror.auth"))

    def test_every_rule_holds(self):
        found = []
        for lower, forbidden in FORBIDDEN:
            found += violations(lower, forbidden)
        self.assertEqual(found, [])

    def test_vocabulary_imports_nothing_above_it(self):
        found = []
        for package in SELF_CONTAINED:
            for name, path in modules_under(package):
                found += [f"{name} imports {i}" for i in sorted(imported_names(name, path))
                          if is_under(i, "zmirror") and not is_under(i, package)]
        self.assertEqual(found, [])

    def test_no_import_circles(self):
        graph = import_graph(all_modules())
        self.assertGreater(len(graph), 50)
        self.assertEqual(circles(graph), [])

    def test_the_circle_finder_finds_circles(self):
        # a package whose __init__ imports a submodule that imports a name from the
        # package, and a plain two-module loop; a submodule import is no edge to the package
        tmp = Path(self.mktemp())
        (tmp / "zmirror" / "pkg").mkdir(parents=True)
        files = {
            "zmirror/__init__.py": "",
            "zmirror/pkg/__init__.py": "from zmirror.pkg.impl import run\n",
            "zmirror/pkg/impl.py": "from zmirror.pkg import SETTING\n",
            "zmirror/pkg/other.py": "from zmirror.pkg import impl\nimport zmirror.pkg.impl\n",
            "zmirror/a.py": "def f():\n    from zmirror import b\n",
            "zmirror/b.py": "import zmirror.a\n",
        }
        modules = {}
        for rel, text in files.items():
            path = tmp / rel
            path.write_text(text, encoding="utf-8")
            parts = list(Path(rel).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
        graph = import_graph(modules)
        self.assertEqual(graph["zmirror.pkg.other"], {"zmirror.pkg.impl"})
        self.assertEqual(circles(graph), [["zmirror.a", "zmirror.b"],
                                          ["zmirror.pkg", "zmirror.pkg.impl"]])

    def test_stores_do_not_import_the_auth_layer(self):
        self.assertEqual(violations("zmirror.db", "zmirror.auth"), [])

    def test_auth_does_not_import_the_routes(self):
        self.assertEqual(violations("zmirror.auth", "zmirror.registry.routes"), [])

    def test_identity_imports_nothing_of_zmirror(self):
        self.assertEqual(violations("zmirror.identity", "zmirror"), [])

    def test_importing_the_lower_layers_loads_no_upper_one(self):
        code = (
            "import json, sys\n"
            "import zmirror.db, zmirror.db.users, zmirror.db.whitelists, zmirror.db.watch\n"
            "db = sorted(m for m in sys.modules if m == 'zmirror.auth' or m.startswith('zmirror.auth.'))\n"
            "import zmirror.auth, zmirror.auth.policy, zmirror.auth.whitelist, zmirror.auth.users\n"
            "auth = 'zmirror.registry.routes' in sys.modules\n"
            "print(json.dumps([db, auth]))\n"
        )
        env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        db_loaded, routes_loaded = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(db_loaded, [])
        self.assertFalse(routes_loaded)

    def test_importing_each_layer_loads_nothing_it_may_not_import(self):
        # what Python really loads (parents, __init__ files), not only what the source names
        code = (
            "import importlib, json, sys\n"
            "lower, forbidden, names = json.loads(sys.argv[1])\n"
            "for n in names:\n"
            "    importlib.import_module(n)\n"
            "print(json.dumps(sorted(m for m in sys.modules\n"
            "                        if m == forbidden or m.startswith(forbidden + '.'))))\n"
        )
        env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
        found = {}
        for lower, forbidden in FORBIDDEN:
            if forbidden == "zmirror":
                continue
            names = [n for n, _p in modules_under(lower)]
            out = subprocess.run([sys.executable, "-c", code, json.dumps([lower, forbidden, names])],
                                 capture_output=True, text=True, env=env, timeout=120)
            self.assertEqual(out.returncode, 0, out.stderr)
            loaded = json.loads(out.stdout.strip().splitlines()[-1])
            if loaded:
                found[f"{lower} -> {forbidden}"] = loaded
        self.assertEqual(found, {})

