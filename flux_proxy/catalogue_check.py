"""`flux-proxy models [--check]`: the model table, and how it compares with Cloudflare's
live catalogue.

`--check` asks Cloudflare's free catalogue endpoints (no neurons spent), with the first account
whose token works:

    GET {CF_API_BASE_URL}/accounts/{id}/ai/models/search?task=Text-to-Image
    GET {CF_API_BASE_URL}/accounts/{id}/ai/models/schema?model=<id>

and prints per model: in the table but gone from Cloudflare, listed by Cloudflare but missing
here, and parameters whose name, type, range or default differ. Run it when Cloudflare
announces a model or changes one.

Exit codes: 0 no drift, 1 drift, 2 the check could not be made (no working token, an endpoint
failed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from flux_proxy.models import MODELS, ModelSpec
from flux_proxy.settings import AccountConfig, Settings

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_CANNOT_CHECK = 2

READ_TIMEOUT = 20.0  # small JSON answers
PER_PAGE = 100
MAX_PAGES = 50  # a bound on a paginated answer that never ends
BOUND_KEYS = ("minimum", "maximum", "minLength", "maxLength")

HINT = (
    "When Cloudflare announces or changes a model: update its entry in flux_proxy/models.py "
    "from the catalogue file\n(cloudflare/cloudflare-docs src/content/workers-ai-models/), "
    "then run this again."
)


class CatalogueUnavailable(Exception):
    """The catalogue could not be read; the message is safe to print."""


@dataclass
class CatalogueReport:
    listed: list[str]
    gone: list[str] = field(default_factory=list)  # in the table, not listed
    missing: list[str] = field(default_factory=list)  # listed, not in the table
    third_party: list[str] = field(default_factory=list)  # listed, not a Workers AI model
    changed: dict[str, list[str]] = field(default_factory=dict)  # model -> differences

    @property
    def drift(self) -> bool:
        return bool(self.gone or self.missing or self.changed)


# --- CLI -------------------------------------------------------------------------------------


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare the table with Cloudflare's live catalogue (free: no neurons spent)",
    )


def _run(args: argparse.Namespace) -> int:
    if not args.check:
        print(render_table())
        return EXIT_OK
    from flux_proxy.cli import load_settings  # the CLI's clean configuration errors

    return asyncio.run(run_catalogue_check(load_settings()))


COMMAND = (
    "list the model table; --check compares it with Cloudflare's live catalogue",
    _arguments,
    _run,
)


def render_table() -> str:
    lines = [f"{'model':<48} {'body':<9} {'answer':<11} {'default size':<12} neurons"]
    for spec in MODELS:
        size = f"{spec.default_width}x{spec.default_height}"
        answer = (spec.answer_mime or "raw") if spec.answer == "raw_bytes" else "base64"
        neurons = spec.estimate_neurons(None, None, None)
        lines.append(f"{spec.id:<48} {spec.body:<9} {answer:<11} {size:<12} {neurons:,.2f}")
    return "\n".join(lines)


# --- the check -------------------------------------------------------------------------------


async def run_catalogue_check(settings: Settings, *, out: TextIO = sys.stdout) -> int:
    from flux_proxy.upstream.client import WorkersAIClient

    if not settings.accounts:
        print("No Cloudflare accounts are configured (CF_API_TOKEN_1 and ACCOUNT_1).", file=out)
        return EXIT_CANNOT_CHECK
    client = WorkersAIClient(
        settings.cf_api_base_url,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=min(settings.upstream_read_timeout, READ_TIMEOUT),
    )
    await client.start()
    try:
        verdicts: list[bool | None] = []
        account = await first_working_account(client, settings.accounts, verdicts)
        if account is None:
            if False not in verdicts:
                # No token was rejected: nothing answered (a wrong CF_API_BASE_URL, no network).
                print(
                    f"Cloudflare could not be reached at {settings.cf_api_base_url}: no answer "
                    "to the token check, so the catalogue cannot be read. Check "
                    "CF_API_BASE_URL and the network.",
                    file=out,
                )
                return EXIT_CANNOT_CHECK
            print("No account's token works, so the catalogue cannot be read.", file=out)
            print("Run `flux-proxy check` to see each token's verdict.", file=out)
            return EXIT_CANNOT_CHECK
        try:
            report = await compare_with_catalogue(client, account)
        except CatalogueUnavailable as error:
            print(f"Cloudflare's catalogue could not be read: {error}", file=out)
            return EXIT_CANNOT_CHECK
    finally:
        await client.close()
    print(render_report(report, account), file=out)
    return EXIT_DRIFT if report.drift else EXIT_OK


async def first_working_account(
    client: Any, accounts: list[AccountConfig], verdicts: list[bool | None] | None = None
) -> AccountConfig | None:
    """The first account whose token works; each token's verdict is appended to `verdicts`
    (True works, False rejected, None no answer)."""
    for account in sorted(accounts, key=lambda a: a.number):
        verdict = await client.verify_token(account)
        if verdicts is not None:
            verdicts.append(verdict)
        if verdict is True:
            return account
    return None


async def compare_with_catalogue(client: Any, account: AccountConfig) -> CatalogueReport:
    listed = await search_text_to_image(client, account)
    ours = {spec.id: spec for spec in MODELS}
    report = CatalogueReport(listed=listed)
    report.gone = [model for model in ours if model not in listed]
    for name in listed:
        if name in ours:
            continue
        # Third-party models proxied through /ai/run (openai/..., google/...) are out of scope.
        (report.missing if name.startswith("@") else report.third_party).append(name)
    both = [model for model in ours if model in listed]
    schemas = await asyncio.gather(*(fetch_schema(client, account, model) for model in both))
    for model, theirs in zip(both, schemas, strict=True):
        differences = compare_schema(ours[model], theirs)
        if differences:
            report.changed[model] = differences
    return report


async def search_text_to_image(client: Any, account: AccountConfig) -> list[str]:
    names: list[str] = []
    for page in range(1, MAX_PAGES + 1):
        params = {"task": "Text-to-Image", "page": str(page), "per_page": str(PER_PAGE)}
        body = await _get(client, account, "ai/models/search", params)
        result = body.get("result")
        if not isinstance(result, list):
            raise CatalogueUnavailable("the search answer has no list of models")
        names += [
            e["name"] for e in result if isinstance(e, dict) and isinstance(e.get("name"), str)
        ]
        info = body.get("result_info") if isinstance(body.get("result_info"), dict) else {}
        total_pages = info.get("total_pages")
        if not result or len(result) < PER_PAGE:
            break
        if isinstance(total_pages, int) and page >= total_pages:
            break
    return names


async def fetch_schema(client: Any, account: AccountConfig, model: str) -> dict[str, Any]:
    body = await _get(client, account, "ai/models/schema", {"model": model})
    result = body.get("result")
    if not isinstance(result, dict):
        raise CatalogueUnavailable(f"the schema of {model} is no object")
    return result


async def _get(client: Any, account: AccountConfig, path: str, params: dict) -> dict[str, Any]:
    import aiohttp

    from flux_proxy.upstream.classify import first_error

    try:
        status, body = await client.get_envelope(account, path, params)
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise CatalogueUnavailable(f"{path}: no answer ({type(error).__name__})") from None
    if status != 200 or not isinstance(body, dict) or body.get("success") is not True:
        code, message = first_error(body)
        detail = f"code {code}: {message}" if code is not None else message or "no envelope"
        raise CatalogueUnavailable(f"{path} answered HTTP {status} ({detail})")
    return body


# --- comparing one schema --------------------------------------------------------------------


def compare_schema(spec: ModelSpec, theirs: dict[str, Any]) -> list[str]:
    """Differences between what the table implies and Cloudflare's schema, one line each."""
    from flux_proxy.upstream.catalogue import model_schema

    ours = model_schema(spec)
    differences = _compare_inputs(_properties(ours.get("input")), _properties(theirs.get("input")))
    our_out, their_out = ours["output"], theirs.get("output")
    if isinstance(their_out, dict):
        for key in ("type", "contentType"):
            if key in their_out and their_out.get(key) != our_out.get(key):
                differences.append(
                    f"answer {key}: {our_out.get(key)} here, {their_out.get(key)} at Cloudflare"
                )
    return differences


def _properties(schema: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return {}
    # Only declarations: flux-2-dev's file has a stray `"required": [...]` among them.
    return {k: v for k, v in schema["properties"].items() if isinstance(v, dict)}


def _compare_inputs(ours: dict[str, dict], theirs: dict[str, dict]) -> list[str]:
    lines = []
    for name in theirs:
        if name not in ours:
            kind = theirs[name].get("type", "?")
            lines.append(f"{name}: a parameter at Cloudflare ({kind}), unknown here")
    for name in ours:
        if name not in theirs:
            lines.append(f"{name}: sent from here, but gone from Cloudflare's schema")
    for name in ours:
        if name not in theirs:
            continue
        mine, cloudflare = ours[name], theirs[name]
        if mine.get("type") != cloudflare.get("type"):
            lines.append(
                f"{name}: type {mine.get('type')} here, {cloudflare.get('type')} at Cloudflare"
            )
        for key in BOUND_KEYS:
            if not _same(mine.get(key), cloudflare.get(key)):
                lines.append(
                    f"{name}: {key} {_show(mine.get(key))} here, "
                    f"{_show(cloudflare.get(key))} at Cloudflare"
                )
        # A default Cloudflare does not state (it is in a description, or observed) is no drift.
        if "default" in cloudflare and not _same(mine.get("default"), cloudflare["default"]):
            lines.append(
                f"{name}: default {_show(mine.get('default'))} here, "
                f"{_show(cloudflare['default'])} at Cloudflare"
            )
    return lines


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool | type(None)):
        return float(a) == float(b)
    return a == b


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_report(report: CatalogueReport, account: AccountConfig) -> str:
    lines = [
        f"Cloudflare's Text-to-Image catalogue, asked with account {account.number} "
        f"({account.masked_id}): {len(report.listed)} models listed, {len(MODELS)} in the table.",
        "",
    ]
    for spec in MODELS:
        if spec.id in report.gone:
            lines.append(f"  GONE     {spec.id}: in the table, no longer listed by Cloudflare")
        elif spec.id in report.changed:
            lines.append(f"  CHANGED  {spec.id}")
            lines += [f"             {difference}" for difference in report.changed[spec.id]]
        else:
            lines.append(f"  ok       {spec.id}")
    for name in report.missing:
        lines.append(f"  NEW      {name}: listed by Cloudflare, missing here")
    for name in report.third_party:
        lines.append(f"  (other)  {name}: a third-party model, not served by this proxy")
    lines.append("")
    if report.drift:
        count = len(report.gone) + len(report.missing) + len(report.changed)
        lines.append(f"Drift: {count} model(s) differ from Cloudflare's catalogue.")
        lines.append(HINT)
    else:
        lines.append("No drift: the table matches Cloudflare's catalogue.")
    return "\n".join(lines)
