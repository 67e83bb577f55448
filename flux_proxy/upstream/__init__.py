"""Everything about Cloudflare Workers AI: the REST client and outcome classification."""

from flux_proxy.upstream.classify import Attempt, OutcomeKind, classify, classify_exception
from flux_proxy.upstream.client import WorkersAIClient

__all__ = ["Attempt", "OutcomeKind", "WorkersAIClient", "classify", "classify_exception"]
