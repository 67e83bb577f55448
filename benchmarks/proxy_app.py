"""A uvicorn factory for the proxy, for `uvicorn --factory proxy_app:create --workers N`.

`flux-proxy serve` has no `--workers` option; this builds the same app from the same
environment so the benchmark can measure how throughput scales with worker processes.
"""

from __future__ import annotations

from starlette.applications import Starlette

from flux_proxy.app import create_app
from flux_proxy.cli import load_settings
from flux_proxy.logs import configure_logging


def create() -> Starlette:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
