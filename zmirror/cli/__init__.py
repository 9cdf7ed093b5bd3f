"""The ``zmirror`` admin command line: works on the data directory, synchronously,
one short transaction per store call, safe while the server runs (design:
docs/design/cli.md).  One module per group of commands; :mod:`~zmirror.cli.parser`
builds the parser and runs :func:`main`."""

from zmirror.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
