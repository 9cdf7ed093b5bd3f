"""The ``zmirror`` admin command line (works on the data directory)."""

from __future__ import annotations

import argparse
import sys


def cmd_check_config(args) -> int:
    from zmirror.config import ConfigError, load_config

    try:
        cfg = load_config(args.data, args.config)
    except ConfigError as e:
        print(f"zmirror: error: {e}", file=sys.stderr)
        return 1
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{cfg.config_path}: OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zmirror", description="ZMirror administration / ZMirror 管理工具")
    p.add_argument("--data", default="data", help="data directory (default ./data)")
    p.add_argument("--config", default=None, help="config file (default <data>/config.toml)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-config", help="validate config.toml")
    c.set_defaults(func=cmd_check_config)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
