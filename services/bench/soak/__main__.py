"""`python -m tidings.services.bench.soak [--profile short|long] [--seed N] [--json PATH]`.

Exit status 0 when every check held, 1 when any failed (each is printed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from .driver import soak
from .profile import PROFILES


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tidings.services.bench.soak", description=__doc__
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="write the whole report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    report = asyncio.run(soak(PROFILES[args.profile], args.seed))
    print("\n".join(report.lines()))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report.as_dict(), out, indent=2, default=str)
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
