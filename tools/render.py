#!/usr/bin/env python
"""Draw a genotype: ``python tools/render.py derived/x4.json --out drawings/x4``.

Writes network.{svg,png}, one cell_<k>.{svg,png} per distinct cell and the .gv sources. Without
graphviz's `dot` program only the .gv sources are written and the install command is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdnas.core.errors import HdnasError, show_warnings_plainly  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("genotype", help="genotype JSON (e.g. derived/x4.json)")
    p.add_argument("--out", required=True, help="folder for the drawings (created if missing)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="fail unless the genotype is for this scale")
    p.add_argument("--formats", default="svg,png", help="comma-separated output formats (default: %(default)s)")
    args = p.parse_args(argv)
    show_warnings_plainly()

    from hdnas.core.genotype import load_genotype
    from hdnas.core.render import write_drawings

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    try:
        geno = load_genotype(args.genotype, scale=args.scale)  # before anything is written
        written = write_drawings(geno, args.out, formats)
    except (HdnasError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if written.message:
        print(("note: " if not written.dot_missing else "") + written.message, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
