"""`python -m services.gateway`: one gateway with settings from the environment."""

from __future__ import annotations

import sys

from shared.settings import Settings

from .main import serve


def main() -> None:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"tidings gateway: {exc}")
    if not settings.redis_url:
        sys.exit("tidings gateway: set REDIS_URL (or use `tidings gateway` next to `tidings up`)")
    serve(settings)


if __name__ == "__main__":
    main()
