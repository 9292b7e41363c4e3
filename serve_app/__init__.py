"""Chorus on Ray Serve: deployments per addon, an OpenAI-compatible HTTP ingress.

This package maps a built voice onto Ray Serve and encodes audio for HTTP; it never
does tensor math. Public pieces so far live in their modules: ``audio_format``
(streaming encoders), ``schemas`` (request, error and SSE shapes) and ``options``
(deployment option layering).
"""

__all__: list[str] = []
