"""Which model a caller's `model` name means (full `@cf/...` id, short name, or alias), and in
which form to answer when the caller names none.

Every OpenAI image model name, present and future (`gpt-image-1`, `gpt-image-1.5`,
`gpt-image-2-2026-04-21`, `chatgpt-image-latest`, `dall-e-3`, ...), is an alias of
`DEFAULT_MODEL` by a pattern, so tools that hard-code one keep working when OpenAI adds the
next. `MODEL_ALIASES` adds names or re-points these; setting it never removes the pattern.
"""

from __future__ import annotations

import re
from typing import Literal

from flux_proxy.models import ModelSpec, find_model
from flux_proxy.settings import Settings

ResponseFormat = Literal["b64_json", "url"]

# gpt-image-<version>[-<variant>], chatgpt-image-<name>, dall-e-2/3; each with an optional
# dated snapshot (-YYYY-MM-DD). Not "anything starting with dall-e-": dall-e-9 is a typo to
# report, not a model to guess.
OPENAI_IMAGE_MODEL = re.compile(
    r"^(?:gpt-image-\d+(?:\.\d+)?(?:-[a-z]+)?|chatgpt-image-[a-z0-9]+(?:\.\d+)?|dall-e-[23])"
    r"(?:-\d{4}-\d{2}-\d{2})?$",
    re.IGNORECASE,
)
_B64_ONLY = re.compile(r"^(gpt-image|chatgpt-image)-", re.I)
_URL_ONLY = re.compile(r"^dall-e-", re.I)


def configured_aliases(settings: Settings) -> dict[str, str]:
    """MODEL_ALIASES as set (empty when left at its built-in default)."""
    if "model_aliases" in settings.model_fields_set:
        return settings.model_aliases
    return {}


def lookup_model(name: str, settings: Settings) -> ModelSpec | None:
    name = name.strip()
    spec = find_model(name, configured_aliases(settings))
    if spec is None and OPENAI_IMAGE_MODEL.match(name):
        spec = find_model(settings.default_model)
    return spec


def default_response_format(name: str | None, settings: Settings) -> ResponseFormat | None:
    """The form to answer in when the request names none (None: both `b64_json` and `url`).

    `auto` answers as OpenAI does for the name the caller used: never a URL for GPT image
    models (Open WebUI, told `gpt-image-1`, reads `url` first and cannot fetch a private
    address), a URL for DALL·E (LangChain's and LlamaIndex's DALL·E tools read only `url`),
    and both for the proxy's own names or no name (the seed's clients read either).
    """
    chosen = settings.default_response_format
    if chosen != "auto":
        return None if chosen == "both" else chosen
    name = (name or "").strip()
    if _B64_ONLY.match(name):
        return "b64_json"
    if _URL_ONLY.match(name):
        return "url"
    return None
