"""deploy/: the compose file, nginx config and Procfile say what they must (no Docker here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tidings.services.cli import main
from tidings.services.cli.main import build_parser

DEPLOY = ROOT / "deploy"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)  # type: ignore[arg-type]


def test_compose_has_redis_gateway_scalable_workers_and_nginx() -> None:
    services = _compose()["services"]
    assert {"redis", "gateway", "worker", "nginx"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert "ports" not in services["worker"]  # --scale worker=N must not collide on ports
    for name in ("gateway", "worker"):
        command = services[name]["command"]
        assert command[0] == "tidings" and command[1] in _subcommands()
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["gateway"]["environment"]["TIDINGS_HOST"] == "0.0.0.0"
    # Several gateway processes per container, sharing its port.
    assert (
        services["gateway"]["environment"]["TIDINGS_GATEWAY_WORKERS"]
        == "${TIDINGS_GATEWAY_WORKERS:-2}"
    )
    # nginx.conf goes through the image's envsubst template step (its gateways line), on a
    # pinned image that has every directive the config uses, published on loopback by default.
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]
    assert nginx["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert nginx["environment"]["NGINX_ENVSUBST_FILTER"] == "NGINX_GATEWAYS"
    assert "resolve;" in nginx["environment"]["NGINX_GATEWAYS"]
    version = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)-alpine", nginx["image"])
    assert version and tuple(map(int, version.groups())) >= (1, 27, 3)  # upstream `resolve`
    assert all(port.startswith("${NGINX_PUBLISH_ADDR:-127.0.0.1}:") for port in nginx["ports"])


def test_nginx_streams_events_unbuffered_uncompressed_over_http2() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    stream = conf[conf.index("location ~") :]
    for directive in (
        "proxy_buffering off;",
        "gzip off;",
        "proxy_read_timeout 1h;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
    ):
        assert directive in stream, directive
    # Every route that streams, and a dead gateway skipped for the next on a stream request.
    for route in (
        "/api/streams",
        "/api/runs/events",
        "/api/runs/some-run/events",
        "/api/v1/workflows/some-run/stream",
        "/monty/stream",
    ):
        assert re.search(stream_regex(conf), route), route
    assert not re.search(stream_regex(conf), "/api/runs/some-run")
    assert "proxy_next_upstream error timeout;" in stream
    # HTTP/2 as Debian's nginx 1.22 spells it (`http2 on;` needs 1.25.1).
    assert "listen 8443 ssl http2;" in conf and not re.search(r"^\s*http2 on;", conf, re.M)
    assert "text/event-stream" not in re.search(r"gzip_types[^;]*;", conf).group()  # type: ignore[union-attr]
    assert conf.count("{") == conf.count("}")
    # One template variable, the gateways; every other `$` is nginx's own.
    assert re.findall(r"\$\{(\w+)\}", conf) == ["NGINX_GATEWAYS"]
    # Query strings (share tokens) stay out of the access log.
    log_format = conf[conf.index("log_format") : conf.index(";", conf.index("log_format"))]
    assert "$uri" in log_format and "$request_uri" not in log_format
    assert "$request " not in log_format and "$args" not in log_format


def stream_regex(conf: str) -> str:
    match = re.search(r"location ~ (\S+) \{", conf)
    assert match
    return match.group(1)


def test_dockerfile_is_slim_non_root_and_installs_the_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert all("python:3.11-slim" in line for line in stages)
    final = text[text.rindex("FROM ") :]
    assert re.search(r"^USER (?!root)\w+", final, re.M)
    assert "pip install" in final and "--no-index" in final  # wheels built in the first stage
    assert "gcc" not in final and "build-essential" not in final


def _procfile() -> dict[str, str]:
    lines = (DEPLOY / "Procfile").read_text().splitlines()
    pairs = [line.split(":", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): cmd.strip() for name, cmd in pairs}


def test_procfile_has_gateway_and_worker_lines() -> None:
    assert set(_procfile()) == {"gateway", "worker"}
    # Scaled gateways each take the port honcho gives them, not one port for all.
    assert "--port ${PORT:-8000}" in _procfile()["gateway"]


@pytest.mark.parametrize("name", ["gateway", "worker"])
def test_procfile_commands_are_real_cli_commands(name: str) -> None:
    # `exec`: the shell honcho starts becomes the process (its signals, its exit code).
    exec_, *argv = shlex.split(_procfile()[name].replace("${PORT:-8000}", "5000"))
    assert exec_ == "exec" and argv[0] == "tidings" and argv[1] in _subcommands()
    done = subprocess.run(
        [sys.executable, "-m", "tidings.services.cli", *argv[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert f"tidings {argv[1]}" in done.stdout


def test_console_script_entry_point_is_importable() -> None:
    assert callable(main)
