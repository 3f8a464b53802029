"""`python -m tidings.services.worker`: one worker, configured from the environment."""

from __future__ import annotations

import logging
import sys

from tidings.settings import Settings

from .loading import LoadError
from .main import run_worker


def main() -> None:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.stderr.write(f"tidings worker: {exc}\n")
        sys.exit(1)
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(settings)
    except LoadError as exc:
        sys.stderr.write(f"tidings worker: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
