"""Which model a caller's `model` name means: full `@cf/...` id, short name, or alias.

The OpenAI names (`dall-e-2`, `dall-e-3`, `gpt-image-1`) always exist, so tools that hard-code
them work, and they follow `DEFAULT_MODEL`. `MODEL_ALIASES` adds names or re-points these;
setting it never removes the OpenAI names.
"""

from __future__ import annotations

from flux_proxy.models import DEFAULT_ALIASES, ModelSpec, find_model
from flux_proxy.settings import Settings


def effective_aliases(settings: Settings) -> dict[str, str]:
    aliases = dict.fromkeys(DEFAULT_ALIASES, settings.default_model)
    if "model_aliases" in settings.model_fields_set:  # configured, not the built-in default
        aliases.update(settings.model_aliases)
    return aliases


def lookup_model(name: str, settings: Settings) -> ModelSpec | None:
    return find_model(name, effective_aliases(settings))
