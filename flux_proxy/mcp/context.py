"""What one MCP tool call runs with, wherever it came from (stdio or `/mcp`)."""

from __future__ import annotations

from dataclasses import dataclass

from flux_proxy.api.caller import Caller
from flux_proxy.api.routes import Services


@dataclass(frozen=True)
class ToolContext:
    """The proxy's services and who is calling, from where."""

    services: Services
    caller: Caller
    request_id: str
    base_url: str  # for the originals' URLs; "" when unknown (stdio without PUBLIC_BASE_URL)
    local_files: bool  # stdio: references may be local file paths
