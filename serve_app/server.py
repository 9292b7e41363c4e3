"""``chorus serve``: an embedded local Ray running the Chorus Serve application until stopped."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ServeConfig", "free_port", "read_config", "run_server", "start_local"]

IMPORT_PATH = "serve_app:build_app"


class ApplicationConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Ray's own keys (runtime_env, ...) pass through untouched

    name: str = Field("chorus", description="Serve application name.")
    route_prefix: str = Field("/", description="HTTP prefix of the application.")
    import_path: str = Field(IMPORT_PATH, description="Must be serve_app:build_app for chorus serve.")
    args: dict[str, Any] = Field(default_factory=dict, description="build_app arguments (AppArgs).")


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    applications: list[ApplicationConfig] = Field(default_factory=lambda: [ApplicationConfig()], min_length=1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for benchmarks and tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_config(path: Path | None) -> ServeConfig:
    """The Serve config file's applications (or one default application); ValueError if broken."""
    if path is None:
        return ServeConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        config = ServeConfig.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read --config {path}: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"--config {path}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    for app in config.applications:
        if app.import_path != IMPORT_PATH:
            raise ValueError(
                f"--config {path}: chorus serve runs {IMPORT_PATH}, not {app.import_path} (use `serve run`)"
            )
    return config


def start_local(
    config: ServeConfig, host: str, port: int, num_cpus: int | None = None, metrics_port: int | None = None
) -> list[str]:
    """Start Ray and Serve in this process and deploy every application; return their names."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    apps = [(app, build_app(app.args)) for app in config.applications]  # validate before starting Ray
    init: dict[str, Any] = {
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if metrics_port is not None:
        init["_metrics_export_port"] = metrics_port
    ray.init(**init)
    serve.start(http_options={"host": host, "port": port})
    for app, bound in apps:
        serve.run(bound, name=app.name, route_prefix=app.route_prefix, blocking=False)
    return [app.name for app, _ in apps]


def run_server(config: ServeConfig, host: str, port: int, num_cpus: int | None, metrics_port: int | None) -> int:
    """Serve until SIGINT or SIGTERM, then shut Serve and Ray down."""
    import ray
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        names = start_local(config, host, port, num_cpus, metrics_port)
        print(f"chorus: serving {', '.join(names)} on http://{host}:{port} (Ctrl-C to stop)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
