"""`exptrack <command>`: each command parses its options, builds a config and makes one call."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config
from .data.errors import DataError


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (e.g. experiments/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key, type-checked (repeatable)")


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    return load_config(args.config, [*args.overrides, *(extra or [])])


def cmd_demo_data(args: argparse.Namespace) -> None:
    from .data.demo import DemoSpec, write_demo_dataset

    spec = DemoSpec(subjects=args.subjects, classes=args.classes, seed=args.seed)
    root = write_demo_dataset(args.out, spec, progress=True)
    print(f"demo dataset written to {root} ({spec.subjects} subjects, {spec.classes} classes, seed {spec.seed})")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analyze import run_analyze

    run_analyze(_config(args), args.out)


def cmd_cache(args: argparse.Namespace) -> None:
    from .data.prepare import prepare_data

    config = _config(args)
    data = prepare_data(config, progress=True)
    cache_root = Path(config.paths.cache)
    size = sum(p.stat().st_size for p in cache_root.rglob("*.npy"))
    print(f"cache ready at {cache_root}: {len(data.subjects)} subjects, {size / 2**20:.0f} MiB; "
          + ", ".join(f"{s} {len(ix)} clips" for s, ix in data.splits.items()))
    print(data.warnings.summary())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exptrack", description="Exercise recognition experiments on MLflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write the built-in demo dataset")
    p.add_argument("--out", required=True, help="folder to write (DATASET.md layout)")
    p.add_argument("--subjects", type=int, default=12)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("analyze", help="dataset statistics and plots, logged as an MLflow run")
    _config_options(p)
    p.add_argument("--out", help="output folder (default: <paths.outputs>/analysis)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("cache", help="decode every video (and masks, keypoints) into the frame cache")
    _config_options(p)
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"exptrack {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
