"""The import arrows between layers point down only.

- ``zmirror.db`` (stores: rows) never imports ``zmirror.auth`` (policy):
  the stores hand rows to the policy, they do not run it.
- ``zmirror.auth`` never imports the HTTP routes (``zmirror.registry.routes``):
  ``Identity`` lives in ``zmirror.identity``, below both.
- ``zmirror.identity`` imports nothing of ZMirror.

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
]


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
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
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
