"""The ``wsdm`` console script. Each sub-command parses its arguments and makes one call into the package.

Modules are imported inside the handlers so ``wsdm --help`` stays fast (no torch import).
Errors the package raises on purpose (``WsdmError``) are printed without a traceback and exit 2.
"""
from __future__ import annotations

import argparse
import sys

from .errors import WsdmError


# ---- data (foundation) ---------------------------------------------------------------------------
def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="read, validate and convert preference files").add_subparsers(
        dest="data_command", required=True)
    validate = data.add_parser("validate", help="read a file, print a summary; exit 1 on bad input")
    validate.add_argument("path")
    validate.add_argument("--layout", default="auto", help="auto, wsdm, lmsys, chosen_rejected or columns")
    validate.add_argument("--ties", default="keep", help="keep, drop or split tie labels")
    validate.set_defaults(handler=_data_validate)
    convert = data.add_parser("convert", help="convert a file to the canonical parquet layout")
    convert.add_argument("path")
    convert.add_argument("--out", required=True)
    convert.add_argument("--layout", default="auto")
    convert.add_argument("--ties", default="keep")
    convert.set_defaults(handler=_data_convert)
    demo = sub.add_parser("demo-data", help="write the multilingual demo set in the WSDM layout")
    demo.add_argument("--out", required=True)
    demo.add_argument("--n-train", type=int, default=2000)
    demo.add_argument("--n-test", type=int, default=400)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo_data)


def _data_validate(args: argparse.Namespace) -> int:
    from .data import read_pairs

    frame, report = read_pairs(args.path, layout=args.layout, ties=args.ties)
    print(report.to_text())
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from .data import read_pairs, write_canonical

    frame, report = read_pairs(args.path, layout=args.layout, ties=args.ties)
    write_canonical(frame, args.out)
    print(report.to_text())
    print(f"wrote {len(frame)} rows to {args.out}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from .demo_data import write_demo_dataset

    paths = write_demo_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    for path in paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsdm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except WsdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
