"""What the commands that edit stored rows (``zmirror whitelist``, ``zmirror
registry``) share: the admin API's refusals as command-line errors, a row found
by id or by name, JSON and table output, and values read from a file or stdin
(secrets never need to be on the command line)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from zmirror.admin.validate import ApiError
from zmirror.cli.common import CLIError, err, out
from zmirror.db.engine import is_postgresql
from zmirror.db.errors import Conflict, NotFound

# the most a value read from a file or stdin may hold (the API's body is 64 KiB)
MAX_INPUT = 1024 * 1024


@contextmanager
def as_cli_errors(what: str) -> Iterator[None]:
    """The admin API's refusals (``invalid input: url must …``) and the stores'
    (a name that exists, a row deleted meanwhile) as :class:`CLIError` with the
    API's words."""
    try:
        yield
    except ApiError as e:
        raise CLIError(e.message) from None
    except Conflict as e:
        raise CLIError(f"{e.field} already exists") from None
    except NotFound:
        raise CLIError(f"no such {what} (removed meanwhile?)") from None


def find_row(rows: list[dict], target: str, *, what: str, name_key: str,
             name_of: Callable[[str], str], by: Optional[str] = None) -> dict:
    """The row ``target`` names: its id (digits) or its ``name_key`` (compared as
    ``name_of`` makes both).  ``by`` ("id" or the name key) forces one reading;
    without it a target that is the id of one row and the name of another is
    refused as ambiguous."""
    target = target.strip()
    by_id = by_name = None
    if by in (None, "id") and target.isascii() and target.isdigit():
        by_id = next((r for r in rows if r["id"] == int(target)), None)
    if by in (None, name_key):
        key = name_of(target)
        by_name = next((r for r in rows if name_of(r[name_key]) == key), None)
    if by_id is not None and by_name is not None and by_id["id"] != by_name["id"]:
        raise CLIError(f"{target!r} is the id of {what} {by_id[name_key]!r} and the {name_key} of "
                       f"{what} {by_name['id']}: add --by id or --by {name_key}")
    row = by_id or by_name
    if row is None:
        if by == "id":
            raise CLIError(f"no {what} with id {target}")
        if by == name_key:
            raise CLIError(f"no {what} with {name_key} {target!r}")
        raise CLIError(f"no {what} with id or {name_key} {target!r}")
    return row


def applied_hint(cfg) -> None:
    """When a running server uses a changed whitelist or registry (the users'
    note, :func:`~zmirror.cli.common.reload_hint`, speaks of their tokens)."""
    who = "every running node" if is_postgresql(cfg) else "a running server"
    err(f"note: {who} picks this up within 2 s (no SIGHUP or restart needed).")


def print_json(obj: Any) -> None:
    out(json.dumps(obj, ensure_ascii=False, indent=2))


def print_table(header: tuple[str, ...], rows: list[tuple], right: tuple[int, ...] = (0,)) -> None:
    """Columns as wide as their widest cell (the last one not padded); the
    columns numbered in ``right`` aligned to the right."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        parts = [r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]) for i in range(len(r))]
        out("  ".join(parts).rstrip())


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


class Inputs:
    """Values read from files or stdin (``-``); stdin can be read once."""

    def __init__(self):
        self.stdin_for: Optional[str] = None

    def _stdin(self, what: str):
        if self.stdin_for is not None:
            raise CLIError(f"stdin is already read for {self.stdin_for}: give {what} in a file")
        self.stdin_for = what
        return sys.stdin

    def line(self, what: str) -> str:
        """One line of stdin without its line end (``--password-stdin``)."""
        text = self._stdin(what).readline(MAX_INPUT + 1)
        if len(text) > MAX_INPUT:
            raise CLIError(f"{what}: stdin holds a line longer than {MAX_INPUT} characters")
        return text.rstrip("\r\n")

    def text(self, source: str, what: str) -> str:
        """The text of file ``source`` (``-``: stdin), UTF-8, at most :data:`MAX_INPUT`."""
        if source == "-":
            text = self._stdin(what).read(MAX_INPUT + 1)
            where = "stdin"
        else:
            where = source
            try:
                with open(source, encoding="utf-8") as f:
                    text = f.read(MAX_INPUT + 1)
            except UnicodeDecodeError:
                raise CLIError(f"{what}: {source} is not UTF-8 text") from None
        if len(text) > MAX_INPUT:
            raise CLIError(f"{what}: {where} holds more than {MAX_INPUT} characters")
        return text


__all__ = ["MAX_INPUT", "applied_hint", "as_cli_errors", "find_row", "print_json", "print_table", "yes_no", "Inputs"]
