"""``chorus serve``: an embedded local Ray running the Chorus Serve application until stopped.

Everything a user can get wrong is checked before Ray starts: the config, the addons (by building
the application) and every port Chorus opens or has Ray open at a fixed number. Ray's own
processes run on the loopback (node address 127.0.0.1): the HTTP proxy alone binds ``--host``, and
metrics leave through the ingress's ``/metrics``, behind the API keys.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["LOOPBACK", "ServeConfig", "check_port", "free_port", "read_config", "run_server", "start_local"]

IMPORT_PATH = "serve_app:build_app"
LOOPBACK = "127.0.0.1"
# Ray's ports at fixed numbers (its defaults, 44227 and 44217), made free ones for each server so
# that two side by side do not fight over them; read by Ray's processes from their environment.
RAY_FIXED_PORTS = ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")
# Without it Ray (on Linux) replaces a loopback node address by the machine's outward one, and its
# GCS, raylet, object manager, agents and exporters listen on every interface.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_CLAIMS: list[Any] = []  # port locks held while this process serves (see claim_port)


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


def check_port(host: str, port: int, flag: str) -> None:
    """ValueError naming ``port`` and ``flag`` unless a server could listen on ``host:port`` now
    (with ``SO_REUSEADDR``, as uvicorn and Ray's exporters bind)."""
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port ({flag})")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"host {host!r} cannot be resolved: {exc.strerror} (--host)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is in use ({flag})") from None
            raise ValueError(f"port {port} on {host} cannot be opened: {exc.strerror} ({flag})") from None


def claim_port(host: str, port: int, flag: str) -> Any:
    """Hold a lock on ``host:port`` for this process's life (the returned file must stay open), so
    that a second ``chorus serve`` is refused while the first is still starting and has not bound
    the port yet; then check the port (``check_port``)."""
    lock = open(Path(tempfile.gettempdir()) / f"chorus-port-{host}-{port}.lock", "a")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ValueError(f"port {port} on {host} is in use ({flag})") from None  # by a chorus serve
    try:
        check_port(host, port, flag)
    except ValueError:
        lock.close()
        raise
    return lock


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
    """Start Ray and Serve in this process and deploy every application; return their names.

    ValueError, before Ray starts, for a port in use or an application that does not build.
    ``metrics_port`` None or 0: Ray's exporter (on the loopback) gets a port free now.
    """
    _CLAIMS.append(claim_port(host, port, "--port"))
    if metrics_port:
        if metrics_port == port:
            raise ValueError(f"port {port} is both --port and --metrics-port")
        _CLAIMS.append(claim_port(LOOPBACK, metrics_port, "--metrics-port"))
    _ray_on_loopback()
    import ray
    from ray import serve

    from serve_app.app import build_app

    apps = [(app, build_app(app.args)) for app in config.applications]  # validate before starting Ray
    taken = {port}
    init: dict[str, Any] = {
        "address": "local",
        "num_cpus": num_cpus if num_cpus is not None else local_cpus(config),
        "include_dashboard": False,
        "log_to_driver": False,
        "_node_ip_address": LOOPBACK,
        "_metrics_export_port": metrics_port or _free_port_but(taken),
    }
    taken.add(init["_metrics_export_port"])
    for name in RAY_FIXED_PORTS:
        os.environ[name] = str(_free_port_but(taken))
        taken.add(int(os.environ[name]))
    ray.init(**init)
    serve.start(http_options={"host": host, "port": port})
    for app, bound in apps:
        serve.run(bound, name=app.name, route_prefix=app.route_prefix, blocking=False)
    return [app.name for app, _ in apps]


def local_cpus(config: ServeConfig) -> int:
    """Logical CPUs for this machine's Ray: its cores, or twice what the applications' replicas ask
    for at start where that is more (room to scale up), so every replica schedules. Ray's CPUs are
    scheduling tokens: the replicas share the real cores either way."""
    from serve_app import placement
    from serve_app.app import resolve

    asked = sum(
        placement.replicas(options) * placement.need(options)["CPU"]
        for app in config.applications
        for options in resolve(app.args).options.values()
    )
    return max(os.cpu_count() or 1, math.ceil(2 * asked))


def _free_port_but(taken: set[int]) -> int:
    while (port := free_port(LOOPBACK)) in taken:
        pass
    return port


def _ray_on_loopback() -> None:
    """Keep the node address Chorus gives Ray (127.0.0.1) instead of the machine's outward one.
    Ray reads the switch once, at import; where it is imported already, its constant is set too."""
    os.environ[RAY_LOOPBACK_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.__dict__["ENABLE_RAY_CLUSTER"] = False


def run_server(config: ServeConfig, host: str, port: int, num_cpus: int | None, metrics_port: int | None) -> int:
    """Serve until SIGINT or SIGTERM, then shut Serve and Ray down (if they started)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        names = start_local(config, host, port, num_cpus, metrics_port)
        print(f"chorus: serving {', '.join(names)} on http://{host}:{port} (Ctrl-C to stop)", flush=True)
        stop.wait()
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    return 0
