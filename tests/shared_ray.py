"""One Ray instance and one Serve for the test session: each Ray module runs its apps on them and
deletes them when it ends (``serve_apps``), rather than starting and stopping a Ray of its own.

Started on first use; stopped at the end of the session, or by :func:`stop` for a module that
needs a cluster of its own (``test_serve_placement`` starts a multi-node one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from serve_app.server import free_port

#: Logical CPUs: as many as the most demanding module asked of its own Ray (replicas scaled up
#: under load), not the machine's cores.
NUM_CPUS = 6
_url: str | None = None
_cluster: Any = None
#: Apps that stay up for the rest of the session (:func:`session_app`): name -> address.
_session_apps: dict[str, str] = {}


def url() -> str:
    """The shared Serve's HTTP address, starting Ray and Serve if they are not running."""
    global _url
    if _url is None:
        global _cluster
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        port = free_port()
        # One node, as ray.init(address="local") starts it, less its log monitor (no log reaches
        # this driver; it tailed every replica's files at about 3 % of a core) and dashboard.
        head = {
            "num_cpus": NUM_CPUS,
            "include_dashboard": False,
            "include_log_monitor": False,
            "object_store_memory": 512 * 1024 * 1024,
        }
        _cluster = Cluster(initialize_head=True, head_node_args=head)
        try:
            ray.init(address=_cluster.address, log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        except BaseException:
            _shutdown()
            raise
        _url = f"http://127.0.0.1:{port}"
    return _url


def _shutdown() -> None:
    global _cluster
    import ray

    try:
        ray.shutdown()
    finally:
        if _cluster is not None:
            _cluster.shutdown()
            _cluster = None


def stop() -> None:
    """Stop the shared Serve and Ray (a no-op if they are not running)."""
    global _url
    if _url is None:
        return
    from ray import serve

    _url = None
    _session_apps.clear()
    try:
        serve.shutdown()
    finally:
        _shutdown()


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


def session_app(name: str, route_prefix: str, build: Callable[[], Any]) -> str:
    """An app that several modules use, deployed on first use and kept until the shared Serve
    stops (a module that changes it, a replica killed, leaves it as it found it); its address."""
    from ray import serve

    base = url()
    if name not in _session_apps:
        serve.run(build(), name=name, route_prefix=route_prefix)
        _session_apps[name] = f"{base}{route_prefix}"
    return _session_apps[name]
