"""One Ray instance and one Serve for the test session: each Ray module runs its apps on them and
deletes them when it ends (``serve_apps``), rather than starting and stopping a Ray of its own.

Started on first use; stopped at the end of the session, or by :func:`stop` for a module that
needs a cluster of its own (``test_serve_placement`` starts a multi-node one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serve_app.server import free_port

#: Logical CPUs: as many as the most demanding module asked of its own Ray (replicas scaled up
#: under load), not the machine's cores.
NUM_CPUS = 6
_url: str | None = None


def url() -> str:
    """The shared Serve's HTTP address, starting Ray and Serve if they are not running."""
    global _url
    if _url is None:
        import ray
        from ray import serve

        port = free_port()
        ray.init(address="local", num_cpus=NUM_CPUS, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _url = f"http://127.0.0.1:{port}"
    return _url


def stop() -> None:
    """Stop the shared Serve and Ray (a no-op if they are not running)."""
    global _url
    if _url is None:
        return
    import ray
    from ray import serve

    _url = None
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


@contextmanager
def serve_apps(*apps: tuple[Any, str, str]) -> Iterator[str]:
    """Run each ``(app, name, route_prefix)`` on the shared Serve; yield its address; delete them after."""
    from ray import serve

    base = url()
    started: list[str] = []
    try:
        for app, name, prefix in apps:
            serve.run(app, name=name, route_prefix=prefix)
            started.append(name)
        yield base
    finally:
        for name in reversed(started):
            serve.delete(name)
