"""Did a step of the loop improve the model? Compares two ``rscrisis evaluate --json`` files.

    python examples/check_round.py BEFORE.json AFTER.json [--margin 0.05] [--what STEP]

Prints pixel IoU and object F1 before -> after and exits 1 when the second model's pixel IoU
is not at least ``--margin`` above the first's: the quickstart (and so CI) fails when adapting
to the new area, or a round of corrections, does not make the model better there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--margin", type=float, default=0.05, help="required IoU gain")
    parser.add_argument("--what", default="the round", help="the step, for the messages")
    args = parser.parse_args()
    before = json.loads(args.before.read_text())
    after = json.loads(args.after.read_text())
    b, a = before["pixel"]["iou"], after["pixel"]["iou"]
    fb, fa = before["objects"]["f1"], after["objects"]["f1"]
    print(
        f"{args.what}: area B pixel IoU {b:.3f} -> {a:.3f} ({a - b:+.3f}), "
        f"object F1 {fb:.3f} -> {fa:.3f} ({fa - fb:+.3f})",
        file=sys.stderr,
    )
    if a < b + args.margin:
        print(
            f"check_round: after {args.what} the model is not {args.margin:.2f} IoU better on "
            "area B",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
