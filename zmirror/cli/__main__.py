"""``python -m zmirror.cli``: the ``zmirror`` command."""

import sys

from zmirror.cli.parser import main

if __name__ == "__main__":
    sys.exit(main())
