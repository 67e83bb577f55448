"""Who is calling: the identity the API-key check attaches to each `/v1/*` request.

Everything that belongs to somebody (results kept for retries, jobs, files, batches, usage
rows) is keyed by `Caller.name`, never by the key itself, so no key is ever stored or logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.types import Scope

Role = Literal["admin", "user"]


@dataclass(frozen=True)
class Caller:
    name: str  # stable and safe to store or log: a key's name, never the key
    role: Role = "admin"
    # A named key's limits from API_KEYS_FILE (see `flux_proxy/keys/`); None means no limit.
    daily_images: int | None = None
    daily_neurons: float | None = None
    # Workers AI model ids this key may use; None means every model.
    models: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return self.daily_images is not None or self.daily_neurons is not None

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def owns(self, owner: str) -> bool:
        """May this caller read a record that `owner` made? Admins read everyone's."""
        return self.is_admin or self.name == owner


# Requests to routes without a key check (or with --no-auth) act as this one admin.
ANONYMOUS = Caller(name="anonymous", role="admin")
# `flux-proxy mcp` over stdio: whoever started the process; no key is presented.
MCP_STDIO = Caller(name="mcp-stdio", role="admin")
# Callers that no key stands for (names a keys file may not use).
KEYLESS = {caller.name: caller for caller in (ANONYMOUS, MCP_STDIO)}


def master_key_name(index: int, count: int) -> str:
    """`API_MASTER_KEY` keys are named by position: `master`, or `master-2`, `master-3`, ..."""
    return "master" if count == 1 or index == 0 else f"master-{index + 1}"


def caller_of(scope: Scope) -> Caller:
    return scope.get("state", {}).get("caller", ANONYMOUS)
