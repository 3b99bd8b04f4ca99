"""``edgeseal-server run``: serve the management API and the TUF repository."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from edgeseal.ota_server.config import DataDir, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="serve the management API and the TUF repository (HTTP)",
        description=(
            "Serve /api/v1 (management), /tuf (static TUF metadata and targets) and /healthz; "
            "with mqtt_port set in server.toml, also run an MQTT broker for release hints "
            "and read the devices' telemetry (GET /api/v1/fleet). "
            "Online roles are re-signed in the background before they expire. SIGINT or "
            "SIGTERM stops the server gracefully. Put TLS in front of it (a reverse proxy) "
            "when it leaves loopback."
        ),
    )
    p.add_argument("--host", help="address to bind (default: server.toml, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: server.toml, 8443)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from edgeseal.ota_server.app import create_app

    data = DataDir(args.data)
    config = load_config(data)
    broker = None
    hint_settings = None
    telemetry_settings = None
    if config.mqtt_port:
        from edgeseal.ota_server.broker import MosquittoBroker
        from edgeseal.ota_server.telemetry import TelemetrySettings

        broker = MosquittoBroker(data.broker, bind=config.mqtt_bind, port=config.mqtt_port)
        broker.start()
        hint_settings = broker.hint_settings()
        telemetry_settings = TelemetrySettings(
            hint_settings.endpoint, hint_settings.username, hint_settings.password
        )
    app = create_app(args.data, hint_settings=hint_settings, telemetry_settings=telemetry_settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host or config.bind,
            port=config.port if args.port is None else args.port,
            log_level="info" if args.verbose else "warning",
            access_log=bool(args.verbose),
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler
    # that was in place before: make that a no-op, so a requested stop exits 0.
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if broker is not None:
            broker.stop()
    return 0
