"""`python -m tidings.services.gateway`: one gateway with settings from the environment."""

from __future__ import annotations

import argparse
import sys

from tidings.settings import Settings

from .access import check_exposure
from .main import serve
from .pool import reuseport_socket, serve_pool


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings.services.gateway")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT (one process of `tidings gateway --workers N`)",
    )
    args = parser.parse_args()
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"tidings gateway: {exc}")
    try:
        check_exposure(settings)
    except ValueError as exc:
        sys.exit(f"tidings gateway: {exc}")
    if not settings.redis_url:
        sys.exit("tidings gateway: set REDIS_URL (or use `tidings gateway` next to `tidings up`)")
    if args.reuse_port:
        try:
            sock = reuseport_socket(settings.host, settings.port, listen=True)
        except OSError as exc:
            sys.exit(f"tidings gateway: cannot listen on {settings.host}:{settings.port}: {exc}")
        serve(settings, sockets=[sock])
    elif settings.gateway_workers > 1:
        sys.exit(serve_pool(settings, settings.gateway_workers))
    else:
        serve(settings)


if __name__ == "__main__":
    main()
