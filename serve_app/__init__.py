"""Chorus on Ray Serve: addons as deployments behind a streaming HTTP ingress, and the CLI.

Nothing here does tensor math. ``build_app`` (the Serve config's ``import_path``) is imported
lazily so that the CLI's offline commands do not pay for importing Ray.
"""

from typing import Any

__all__ = ["AppArgs", "build_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from serve_app import app

        return getattr(app, name)
    raise AttributeError(name)
