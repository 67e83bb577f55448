"""All configuration, in one pydantic-settings class. Nothing else reads the environment.

Values come from the environment, then `.env`, then the seed's `.dev.vars`. Accounts use the
seed's numbered names, `CF_API_TOKEN_<N>` + `ACCOUNT_<N>`, for any N >= 1 with gaps allowed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from flux_proxy.models import DEFAULT_ALIASES, DEFAULT_MODEL_ID

ENV_FILES = (".dev.vars", ".env")  # later files win, and the environment wins over both

_NUMBERED = re.compile(r"^(CF_API_TOKEN|ACCOUNT|CF_DAILY_NEURONS)_(\d+)$")


class AccountConfig(BaseModel):
    """One Cloudflare account the pool may call."""

    number: int  # the N in ACCOUNT_<N>; tried in ascending order
    account_id: str
    token: SecretStr
    daily_neurons: float | None = None  # None: use the global default; 0 means unlimited

    @property
    def masked_id(self) -> str:
        return mask(self.account_id)


def mask(value: str) -> str:
    """Show enough of an id to recognise it, never enough to use it."""
    if len(value) <= 8:
        return "*" * len(value)
    return f"{value[:4]}…{value[-4:]}"


class ConfigError(ValueError):
    """A setting that stops start-up; the message names the variable to fix."""


def parse_accounts(values: dict[str, str]) -> list[AccountConfig]:
    tokens: dict[int, str] = {}
    ids: dict[int, str] = {}
    budgets: dict[int, str] = {}
    for key, value in values.items():
        match = _NUMBERED.match(key)
        if not match or value is None or str(value).strip() == "":
            continue
        kind, number = match.group(1), int(match.group(2))
        if number < 1:
            raise ConfigError(f"{key}: account numbers start at 1")
        {"CF_API_TOKEN": tokens, "ACCOUNT": ids, "CF_DAILY_NEURONS": budgets}[kind][number] = str(
            value
        ).strip()
    for number in sorted(set(tokens) | set(ids)):
        if number not in tokens:
            raise ConfigError(f"ACCOUNT_{number} is set but CF_API_TOKEN_{number} is not")
        if number not in ids:
            raise ConfigError(f"CF_API_TOKEN_{number} is set but ACCOUNT_{number} is not")
    for number in budgets:
        if number not in ids:
            raise ConfigError(f"CF_DAILY_NEURONS_{number} is set but account {number} is not")
    return [
        AccountConfig(
            number=number,
            account_id=ids[number],
            token=SecretStr(tokens[number]),
            daily_neurons=(
                parse_budget(budgets[number], f"CF_DAILY_NEURONS_{number}")
                if number in budgets
                else None
            ),
        )
        for number in sorted(ids)
    ]


def parse_budget(value: Any, name: str) -> float:
    """A daily neuron budget: a number, or `0`/`unlimited` for paid accounts (0 = no limit)."""
    text = str(value).strip().lower()
    if text in ("unlimited", "none", "0", ""):
        return 0.0
    try:
        budget = float(text)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number or 'unlimited'") from None
    if budget < 0:
        raise ConfigError(f"{name} must not be negative")
    return budget


class _NumberedAccountsSource(PydanticBaseSettingsSource):
    """Collects the numbered account variables, which no fixed field name can describe."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by this source
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, str] = {}
        env_files = self.settings_cls.model_config.get("env_file") or ()
        dotenv = DotEnvSettingsSource(self.settings_cls, env_file=env_files, case_sensitive=True)
        values.update({k: v for k, v in dotenv.env_vars.items() if v is not None})
        values.update(os.environ)
        numbered = {k: v for k, v in values.items() if _NUMBERED.match(k)}
        return {"accounts": parse_accounts(numbered)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILES,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # --- access -------------------------------------------------------------------------
    api_master_key: SecretStr | None = Field(
        default=None, description="One key, or several separated by commas."
    )
    no_auth: bool = Field(default=False, description="Serve without a key (CLI --no-auth only).")

    # --- upstream -----------------------------------------------------------------------
    cf_api_base_url: str = "https://api.cloudflare.com/client/v4"
    accounts: list[AccountConfig] = Field(default_factory=list)
    default_model: str = DEFAULT_MODEL_ID
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_ALIASES),
        description="name=model pairs separated by commas, or a JSON object.",
    )
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 150.0  # FLUX.2 dev can take a minute at 1920x1080
    request_deadline: float = 300.0  # one request's whole failover, across accounts

    # --- the pool -----------------------------------------------------------------------
    routing_strategy: Literal["ordered", "round_robin", "most_remaining"] = "ordered"
    daily_neurons: float = 10_000.0  # each account's daily budget; 0 = unlimited
    account_concurrency: int = Field(default=4, ge=1)
    slot_wait_seconds: float = Field(default=10.0, ge=0)
    rate_limit_cooldown: float = 60.0  # a 429 without Retry-After
    capacity_cooldown: float = 15.0  # 3040 "capacity temporarily exceeded"

    # --- state --------------------------------------------------------------------------
    data_dir: Path = Path(".flux-proxy")
    state_backend: Literal["auto", "memory", "sqlite", "redis"] = "auto"
    redis_url: str | None = None
    redis_prefix: str = "flux-proxy:"

    # --- requests and responses ---------------------------------------------------------
    max_prompt_chars: int = 10_000
    max_image_bytes: int = 10 * 1024 * 1024  # one reference image
    max_body_bytes: int = 50 * 1024 * 1024  # a whole request
    image_ttl_seconds: int = 3600  # URL responses, like OpenAI's
    stream_keepalive_seconds: float = Field(default=10.0, gt=0)  # SSE comments while waiting
    public_base_url: str | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A client must deliver its whole body within this many seconds (408 after), so a slow
    # trickle cannot hold a connection and its buffers for ever.
    body_read_timeout: float = Field(default=60.0, gt=0)

    # --- OpenAI surface: answer forms, variations, masks (issue 11) ----------------------
    # The answer's form when a request names no response_format: `auto` answers as OpenAI
    # does for the model name used (gpt-image-*/chatgpt-image-*: b64_json, dall-e-*: url,
    # other names: both); `both`, `b64_json` or `url` fix it for every request.
    default_response_format: Literal["auto", "both", "b64_json", "url"] = "auto"
    # `POST /v1/images/variations`: the model that makes them (the image is reference 0) and
    # the prompt it gets.
    variation_model: str = DEFAULT_MODEL_ID
    variation_prompt: str = (
        "A variation of the reference image: the same subject, composition, style and colour "
        "palette, with small natural differences in the details."
    )
    # Edits with a mask when the named (or default) model takes none go to this model; empty:
    # such edits are refused with a 400 naming `mask`.
    mask_model: str = "@cf/runwayml/stable-diffusion-v1-5-inpainting"

    # --- operations ---------------------------------------------------------------------
    log_format: Literal["json", "text"] = "text"
    log_level: str = "INFO"
    log_prompts: bool = False
    emulator: bool = Field(default=False, description="Set by `serve --emulator`.")
    # On SIGTERM: stop accepting, let in-flight requests finish for up to this long, then stop.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    # --- Files and Batch API (issue 10) ----------------------------------------------------
    # OpenAI's own limits (200 MB a file, 50,000 lines a batch) are the ceilings.
    files_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1, le=200 * 1024 * 1024)
    files_ttl_seconds: int = Field(default=30 * 86400, ge=60)  # uploaded files
    batch_max_lines: int = Field(default=50_000, ge=1, le=50_000)
    # Output and error files, and the images their URLs point at.
    batch_output_ttl: int = Field(default=30 * 86400, ge=60)
    # Live requests keep priority: batch lines use at most this share of each account's
    # ACCOUNT_CONCURRENCY slots (at least one), ...
    batch_slot_share: float = Field(default=0.5, gt=0, le=1)
    # ... and leave this many neurons of each account's daily budget for live requests.
    # None: the price of one image of DEFAULT_MODEL at its default size and steps.
    batch_budget_reserve: float | None = Field(default=None, ge=0)
    # A line's runner holds it this long; after that another runner (replica) takes it over.
    # Must outlast REQUEST_DEADLINE, or a slow line could run twice.
    batch_line_lease_seconds: float = Field(default=600.0, gt=0)
    # How often an idle runner looks at the store for new batches, cancels and returns of
    # accounts. It never calls Cloudflare to find out.
    batch_poll_seconds: float = Field(default=2.0, gt=0)
    batch_runner: bool = True  # False: this replica serves the API but runs no batch lines
    # --- async jobs (Prefer: respond-async) ----------------------------------------------
    job_workers: int = Field(default=4, ge=1)  # jobs one process runs at once
    # A worker renews its hold on a job every third of this; a job whose process died is
    # taken up again by another (or the restarted one) this long after its last renewal.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    # How long a finished job (and its images, when b64_json) can still be collected. Its own
    # setting, not RESULT_TTL_SECONDS: whoever polls a job may come back much later than an
    # SDK retry does.
    job_result_ttl_seconds: float = Field(default=900.0, gt=0)

    # --- work: kept results, retries and the seeded cache (issue 9) -----------------------
    # A finished result whose caller left (or that an Idempotency-Key names) is kept this long
    # for a retry to collect.
    result_ttl_seconds: float = Field(default=900.0, gt=0)
    # Seeded images (deterministic) are cached this long; 0 turns the cache off.
    cache_ttl_seconds: float = Field(default=7 * 86400.0, ge=0)
    cache_max_bytes: int = Field(default=512 * 1024 * 1024, ge=0)  # LRU eviction beyond it

    # --- teams: named keys, per-key quotas, usage (issue 13) -----------------------------
    # A TOML file of named keys with roles, quotas and allowed models (see `flux_proxy/keys/`).
    api_keys_file: Path | None = None
    keys_reload_seconds: float = Field(default=2.0, gt=0)  # how often its mtime is checked
    usage_history_days: int = Field(default=90, ge=1)  # days of per-key usage rows kept
    # `/metrics` for anyone who can reach it (`none`: scrapers usually run inside the network)
    # or only with an admin key (`admin`).
    metrics_auth: Literal["none", "admin"] = "none"
    # --- work: kept results, retries and the seeded cache (issue 9) -----------------------
    # A finished result whose caller left (or that an Idempotency-Key names) is kept this long
    # for a retry to collect.
    result_ttl_seconds: float = Field(default=900.0, gt=0)
    # Seeded images (deterministic) are cached this long; 0 turns the cache off.
    cache_ttl_seconds: float = Field(default=7 * 86400.0, ge=0)
    cache_max_bytes: int = Field(default=512 * 1024 * 1024, ge=0)  # LRU eviction beyond it

    # --- MCP server (`flux-proxy mcp` over stdio, `/mcp` over streamable HTTP) ------------
    # An image too large for a tool answer goes as a preview in this format (the full-size
    # original is kept in the image store and linked). PNG previews are only scaled down.
    mcp_image_format: Literal["jpeg", "webp", "png"] = "jpeg"
    # Base64 bytes of all the previews in one answer together: MCP hosts handle answers under
    # about 1 MB well, and the SDK's HTTP client refuses SSE events over 1 MiB by default.
    mcp_image_max_bytes: int = Field(default=700_000, ge=20_000)
    # Seconds between progress notifications while a tool call's images are being made.
    mcp_progress_interval: float = Field(default=2.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls,
        init_settings,
        env_settings,
        dotenv_settings,
        file_secret_settings,
    ):
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _NumberedAccountsSource(settings_cls),
            file_secret_settings,
        )

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
            return {name.strip(): target.strip() for name, target in pairs}
        return value

    @field_validator("trusted_proxies", "cors_origins", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("daily_neurons", mode="before")
    @classmethod
    def _parse_daily_neurons(cls, value: Any) -> Any:
        return parse_budget(value, "DAILY_NEURONS")

    @property
    def master_keys(self) -> list[str]:
        if self.api_master_key is None:
            return []
        raw = self.api_master_key.get_secret_value()
        return [key.strip() for key in raw.split(",") if key.strip()]

    def budget_for(self, account: AccountConfig) -> float | None:
        """The account's daily budget in neurons, or None for unlimited."""
        budget = account.daily_neurons if account.daily_neurons is not None else self.daily_neurons
        return budget or None

    @property
    def resolved_state_backend(self) -> str:
        if self.state_backend != "auto":
            return self.state_backend
        return "redis" if self.redis_url else "sqlite"


# --- loading at start-up (the CLI and each `serve --workers` process) ------------------------

EXIT_CONFIG = 2


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and files; a bad value exits with a clean message.

    Here rather than in the CLI, so the app factory of `serve --workers N` needs no import of
    the CLI (which imports the app)."""
    try:
        return Settings(**overrides)
    except ConfigError as error:
        raise SystemExit(config_failure(str(error))) from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        )
        raise SystemExit(config_failure(problems)) from None


def config_failure(message: str) -> int:
    print(f"flux-proxy: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG
