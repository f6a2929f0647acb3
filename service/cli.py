"""The `mmserve` command: `serve` (the HTTP service), `train` and `evaluate` (the model's, imported lazily),
and `caption`, `vqa`, `embed`, `transcribe`: a client of a running server (service.client_cli).

`serve` takes its settings from `MMSERVE_*` environment variables; flags override them. It runs one
uvicorn worker: a second worker would load a second copy of the model onto the same device. It binds
its port before anything loads (a busy port exits at once), and drains on SIGTERM (service.draining);
its exit statuses are service.exits' `ExitStatus`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, get_args

import uvicorn
from pydantic import ValidationError

from service.client_cli import add_client_commands
from service.client_cli import run as run_client
from service.draining import DrainingServer
from service.exits import ExitStatus
from service.logs import configure_logging
from service.settings import DType, LogLevel, Settings

logger = logging.getLogger(__name__)

CLIENT_COMMANDS = ("caption", "vqa", "embed", "transcribe")  # against a running server: service.client_cli


def serve(overrides: dict[str, Any]) -> None:
    """Run the service until SIGTERM/SIGINT, then drain and exit (statuses: service.exits, README)."""
    from service.app import create_app

    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        fail(ExitStatus.USAGE, f"invalid settings: {problems}")
    configure_logging(settings.log_level, settings.log_format)
    listener = listen(settings.host, settings.port)  # before the model loads: a busy port fails in a second
    app = create_app(settings)

    def begin_drain() -> None:
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            runtime.begin_drain()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        log_config=None,  # keep the logging configured above
        access_log=False,  # our own request line (service.logs) replaces uvicorn's
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        timeout_keep_alive=settings.keep_alive_s,
    )
    logger.info("listening on http://%s:%d", *listener.getsockname()[:2])
    DrainingServer(config, on_exit=begin_drain, grace_s=settings.drain_grace_s).run(sockets=[listener])
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.exit_status is not None:  # stopped while unhealthy: say so
        sys.exit(runtime.exit_status)


def listen(host: str, port: int) -> socket.socket:
    """The bound listening socket (uvicorn listens on it once the app starts); exits with CANNOT_LISTEN."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses a TIME_WAIT port
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        what = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be listened on ({e.strerror})"
        fail(ExitStatus.CANNOT_LISTEN, f"{host}:{port} {what} (MMSERVE_HOST, MMSERVE_PORT)")
    sock.set_inheritable(True)
    return sock


def fail(status: ExitStatus, reason: str) -> NoReturn:
    """One line on stderr, and exit with `status`."""
    print(f"mmserve: {reason}", file=sys.stderr)
    sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmserve", description="Multimodal inference service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP service (settings: MMSERVE_* variables)")
    serve_parser.add_argument("--host", help="address to bind (MMSERVE_HOST)")
    serve_parser.add_argument("--port", type=int, help="port to bind (MMSERVE_PORT)")
    serve_parser.add_argument("--model", help="builtin, a checkpoint folder or a Hugging Face id (MMSERVE_MODEL)")
    serve_parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (MMSERVE_DEVICE)")
    serve_parser.add_argument("--dtype", choices=get_args(DType), help="MMSERVE_DTYPE")
    serve_parser.add_argument("--log-level", choices=get_args(LogLevel), help="MMSERVE_LOG_LEVEL")

    # Listed for --help only: main() hands everything after the word to the model's own parser.
    commands.add_parser("train", help="train the built-in model (model.train; its own --help)")
    commands.add_parser("evaluate", help="evaluate a model (model.evaluate; its own --help)")
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `mmserve` console script and of `python -m service`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from model import train

        train.main(argv[1:])
        return
    if argv and argv[0] == "evaluate":
        from model import evaluate

        evaluate.main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command in (*CLIENT_COMMANDS, "generate"):  # generate: service.client_generate
        sys.exit(run_client(args))
    serve({key: getattr(args, key) for key in ("host", "port", "model", "device", "dtype", "log_level")})
