"""Argument parsing and the entry point. Settings are read from the environment once, here, and
passed down; the only place that turns errors into exit codes and one-line messages is `main`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tidings.settings import Settings, parse_duration

from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from .local import gateway_url, with_redis_url

__all__ = ["build_parser", "main"]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, like \'{"topic": "tides"}\'')
    return value


def _module_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected module names, like myflows,other.flows")
    return names


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_INSECURE_HELP = (
    "serve a non-loopback address without TIDINGS_AUTH_TOKENS (anyone reaching it controls "
    "every run)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Durable multi-step workflows on a worker pool, streamed live over SSE.",
        epilog="Settings come from the environment: REDIS_URL and TIDINGS_* "
        "(see `tidings env`). Exit codes: 0 ok, 1 error or failed run, 2 usage, "
        "3 cancelled run, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="Valkey (embedded unless REDIS_URL), a gateway and N workers")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument("--port", type=int, help="gateway port (default TIDINGS_PORT or 8000)")
    up.add_argument("--host", help="gateway bind address (default TIDINGS_HOST or 127.0.0.1)")
    up.add_argument(
        "--gateway-workers",
        type=int,
        help="gateway processes on the one port (default TIDINGS_GATEWAY_WORKERS or 1)",
    )
    up.add_argument("--grace", type=float, default=10.0, help="seconds to wait on shutdown")
    up.add_argument("--insecure", action="store_true", default=None, help=_INSECURE_HELP)
    up.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="run the services on an embedded Valkey Cluster of N primaries instead of one "
        "Valkey (TIDINGS_REDIS_CLUSTER=true for the children)",
    )
    up.add_argument(
        "--replicas", type=int, metavar="R", help="with --cluster: replicas per primary (default 1)"
    )

    gw = sub.add_parser("gateway", help="run one gateway (HTTP API, SSE, dashboard) in foreground")
    gw.add_argument("--port", type=int)
    gw.add_argument("--host")
    gw.add_argument(
        "--workers",
        dest="gateway_workers",
        type=int,
        help="processes sharing the port via SO_REUSEPORT (default TIDINGS_GATEWAY_WORKERS or 1)",
    )
    gw.add_argument("--insecure", action="store_true", default=None, help=_INSECURE_HELP)
    worker = sub.add_parser("worker", help="run one worker in the foreground")
    worker.add_argument(
        "--workflows",
        type=_module_list,
        metavar="MOD[,MOD]",
        help="modules to load workflows from, instead of TIDINGS_WORKFLOWS (the current "
        "directory is importable)",
    )

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="gateway URL (default http://TIDINGS_HOST:TIDINGS_PORT)")

    run = sub.add_parser("run", parents=[client], help="start a run; prints its id")
    run.add_argument("workflow")
    run.add_argument("--input", type=_json_object, default=None, help="input as a JSON object")
    run.add_argument("--follow", "-f", action="store_true", help="then watch it to the end")
    run.add_argument("--json", action="store_true", help="with --follow: events as JSON lines")

    watch = sub.add_parser("watch", parents=[client], help="follow a run live until it ends")
    watch.add_argument("run_id", metavar="RUN")
    watch.add_argument("--json", action="store_true", help="print events as JSON lines")

    sig = sub.add_parser("signal", parents=[client], help="send stop/pause/resume/cancel/message")
    sig.add_argument("run_id", metavar="RUN")
    sig.add_argument("name", metavar="NAME")
    sig.add_argument("--payload", type=_json_object, default=None, help="JSON object")

    share = sub.add_parser(
        "share", parents=[client], help="a read-only link to one run, valid for a while"
    )
    share.add_argument("run_id", metavar="RUN")
    share.add_argument(
        "--ttl", type=int, help="seconds it stays valid (default TIDINGS_SHARE_TTL_S)"
    )

    wfs = sub.add_parser(
        "workflows", parents=[client], help="the workflow catalog: versions, workers serving each"
    )
    wfs.add_argument("--json", action="store_true", help="print the catalog as JSON")

    new = sub.add_parser("new", help="write NAME.py, a runnable workflow module to start from")
    new.add_argument("name", metavar="NAME", help="workflow and module name (a Python identifier)")

    ls = sub.add_parser("ls", parents=[client], help="list runs, newest first")
    ls.add_argument("--workflow")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true", help="print the runs as JSON")

    bench = sub.add_parser("bench", help="benchmarks against their baselines, on real servers")
    bench.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes for all)")
    bench.add_argument("--only", action="append", metavar="NAME", help="run only these")
    bench.add_argument("--json", metavar="PATH", help="also write results as JSON")

    prune = sub.add_parser("prune", help="remove finished runs older than the retention, now")
    prune.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="finished at least this long ago: seconds, or 7d, 12h, 30m (default "
        "TIDINGS_RETENTION)",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")

    mig = sub.add_parser(
        "migrate", help="upgrade the namespace's keys to this version's schema (services stopped)"
    )
    mig.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    mig.add_argument("--namespace", help="the namespace to migrate (default TIDINGS_NAMESPACE)")
    mig.add_argument("--json", action="store_true", help="print the report as JSON")

    sub.add_parser("env", help="list the settings and their environment variables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        k: v
        for k in ("host", "port", "gateway_workers", "insecure", "namespace")
        if (v := getattr(args, k, None)) is not None
    }
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        return _fail(" ".join(str(exc).split()), EXIT_USAGE)
    if args.command in ("up", "gateway"):
        from tidings.services.gateway.access import check_exposure

        try:
            check_exposure(settings)
        except ValueError as exc:
            return _fail(str(exc), EXIT_USAGE)
    try:
        return _COMMANDS[args.command](args, settings)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(message: str, code: int) -> int:
    print(f"tidings: error: {message}", file=sys.stderr, flush=True)
    return code


# -- commands --------------------------------------------------------------------------------


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from .supervisor import Supervisor

    if args.workers < 0:
        raise CliError("--workers must be >= 0", EXIT_USAGE)
    cluster = _cluster_shape(args, settings)
    if settings.port == 0:  # "any port": pick it here so the banner and readiness know it
        from tidings.embedded import free_port

        settings = settings.model_copy(update={"port": free_port()})
    return Supervisor(settings, workers=args.workers, grace_s=args.grace, cluster=cluster).run()


def _cluster_shape(args: argparse.Namespace, settings: Settings) -> tuple[int, int] | None:
    """(primaries, replicas each) of the cluster `--cluster N [--replicas R]` asks for."""
    if args.cluster is None:
        if args.replicas is not None:
            raise CliError("--replicas goes with --cluster N", EXIT_USAGE)
        return None
    replicas = 1 if args.replicas is None else args.replicas
    if args.cluster < 1 or replicas < 0:
        raise CliError("--cluster N needs N >= 1, and --replicas R >= 0", EXIT_USAGE)
    if settings.redis_url:
        raise CliError("--cluster starts its own cluster: unset REDIS_URL", EXIT_USAGE)
    return args.cluster, replicas


def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from tidings.services.gateway.main import serve
    from tidings.services.gateway.pool import serve_pool

    settings = with_redis_url(settings)
    if settings.gateway_workers > 1:
        return serve_pool(settings, settings.gateway_workers)
    serve(settings)
    return EXIT_OK


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from tidings.services.worker.main import run_worker

    settings = with_redis_url(settings)
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        logging.getLogger("arq").setLevel(logging.WARNING)  # a line per job otherwise
    from tidings.services.worker.loading import LoadError

    try:
        run_worker(settings, args.workflows)
    except LoadError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return EXIT_OK


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from .api import Api

    base = gateway_url(settings, args.url)
    with Api(base, token=settings.token) as api:
        record = api.start(args.workflow, args.input)
    run_id = str(record["run_id"])
    if record.get("warning"):  # e.g. no live worker serves it: queued, waiting for one
        print(f"tidings: warning: {record['warning']}", file=sys.stderr, flush=True)
    if not args.follow:
        print(run_id, flush=True)
        return EXIT_OK
    if not args.json:
        print(f"run {run_id} ({args.workflow}) started", file=sys.stderr, flush=True)
    from .watch import watch_run

    return watch_run(base, run_id, json_lines=args.json, token=settings.token)


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    from .watch import watch_run

    return watch_run(
        gateway_url(settings, args.url), args.run_id, json_lines=args.json, token=settings.token
    )


def _signal(args: argparse.Namespace, settings: Settings) -> int:
    from .api import Api

    with Api(gateway_url(settings, args.url), token=settings.token) as api:
        result = api.signal(args.run_id, args.name, args.payload)
    print(json.dumps(result, ensure_ascii=False) if result is not None else "ok", flush=True)
    return EXIT_OK


def _share(args: argparse.Namespace, settings: Settings) -> int:
    from .api import Api

    base = gateway_url(settings, args.url)
    with Api(base, token=settings.token) as api:
        body = {"ttl_s": args.ttl} if args.ttl else None
        result = api.request("POST", f"/api/runs/{args.run_id}/share", json=body)
    links = result["links"]
    print(f"{base}{links['dashboard']}", flush=True)
    print(f"stream: {base}{links['events']}", file=sys.stderr, flush=True)
    return EXIT_OK


def _ls(args: argparse.Namespace, settings: Settings) -> int:
    from .api import Api
    from .tables import print_runs

    with Api(gateway_url(settings, args.url), token=settings.token) as api:
        runs = api.list_runs(workflow=args.workflow, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(runs, ensure_ascii=False, indent=2), flush=True)
    else:
        print_runs(runs)
    return EXIT_OK


def _workflows(args: argparse.Namespace, settings: Settings) -> int:
    from .api import Api
    from .tables import print_workflows

    with Api(gateway_url(settings, args.url), token=settings.token) as api:
        catalog = api.request("GET", "/api/workflows")["workflows"]
    if args.json:
        print(json.dumps(catalog, ensure_ascii=False, indent=2), flush=True)
    else:
        print_workflows(catalog)
    return EXIT_OK


def _new(args: argparse.Namespace, settings: Settings) -> int:
    from .scaffold import write_workflow

    path = write_workflow(args.name)
    print(f"wrote {path}; run it with: tidings worker --workflows {args.name}", flush=True)
    return EXIT_OK


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from tidings.services.bench import run_benchmarks

    return run_benchmarks(quick=args.quick, only=args.only, json_path=args.json)


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    from .prune import prune_command

    return prune_command(
        settings, older_than_s=args.older_than, dry_run=args.dry_run, as_json=args.json
    )


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .migrate import migrate_command

    return migrate_command(settings, dry_run=args.dry_run, as_json=args.json)


def _env(args: argparse.Namespace, settings: Settings) -> int:
    from .tables import print_env

    print_env(Settings.env_help())
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "up": _up,
    "gateway": _gateway,
    "worker": _worker,
    "run": _run,
    "watch": _watch,
    "signal": _signal,
    "share": _share,
    "ls": _ls,
    "workflows": _workflows,
    "new": _new,
    "bench": _bench,
    "prune": _prune,
    "migrate": _migrate,
    "env": _env,
}
