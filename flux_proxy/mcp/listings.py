"""`list_models` and `account_status`: what the proxy serves and what its accounts have left,
from the model table and the pool's snapshot (the same sources as `/v1/models` and `/health`),
scoped to the caller the same way: a key limited to some models is shown those only, and only
admin keys see the per-account detail (a user key gets the summary `/health` gives it).
"""

from __future__ import annotations

from typing import Any

from flux_proxy.api.routes import health_summary
from flux_proxy.clock import iso, next_utc_midnight
from flux_proxy.mcp.context import ToolContext
from flux_proxy.models import MODELS, ModelSpec, find_model
from flux_proxy.pool import AccountPool

STATES = ("available", "cooling", "parked", "disabled")

# Workers AI's price beyond the free allocation (workers-ai.md).
USD_PER_1000_NEURONS = 0.011


def models_listing(tc: ToolContext) -> dict[str, Any]:
    settings = tc.services.settings
    default = find_model(settings.default_model, settings.model_aliases)
    named = default.id if default else settings.default_model
    if default is not None and not tc.caller.may_use(default.id):
        default = named = None  # leaving out model fails for this key: name no default
    return {
        "default_model": named,
        "pricing_note": (
            "neurons are Cloudflare's unit; every account gets 10,000 free a day (reset 00:00 "
            f"UTC), paid usage beyond that costs ${USD_PER_1000_NEURONS} per 1,000"
        ),
        "models": [
            _model_entry(spec, spec is default) for spec in MODELS if tc.caller.may_use(spec.id)
        ],
    }


def _model_entry(spec: ModelSpec, is_default: bool) -> dict[str, Any]:
    size, steps = spec.size_range, spec.steps_range
    width = 1024 if spec.takes_size else spec.default_width
    height = 1024 if spec.takes_size else spec.default_height
    neurons = spec.estimate_neurons(width, height, None)
    return {
        "id": spec.id,
        "short_name": spec.short_name,
        "default": is_default,
        "description": spec.description,
        "takes": {
            "size": f"{size.minimum}-{size.maximum} per side" if size else "fixed size only",
            "default_size": f"{spec.default_width}x{spec.default_height}",
            "steps": (
                f"{steps.minimum}-{steps.maximum} (default {spec.default_steps})"
                if steps
                else f"fixed at {spec.fixed_steps}"
                if spec.fixed_steps
                else "none"
            ),
            "seed": spec.takes_seed,
            "reference_images": spec.max_references,
            "mask": spec.takes_mask,
        },
        # The model table's estimate at default steps; Cloudflare bills what it measures.
        "price_per_1024x1024_image": {
            "size": f"{width}x{height}",
            "neurons": neurons if neurons else None,
            "usd_beyond_free": round(neurons * USD_PER_1000_NEURONS / 1000, 5) if neurons else None,
        },
        "typical_seconds": spec.typical_seconds,
    }


async def account_report(tc: ToolContext) -> dict[str, Any]:
    svc = tc.services
    entries = await svc.pool.snapshot()
    now = svc.clock.now()
    usable = [e for e in entries if AccountPool.is_usable_now(e)]
    budgeted = [e["neurons_remaining_today"] for e in entries if e["daily_budget"] is not None]
    summary = f"{len(usable)} of {len(entries)} accounts can serve now"
    if budgeted:
        summary += f"; {round(sum(budgeted), 2)} neurons left today on budgeted accounts"
    if not usable and entries:
        returns = sorted(e["until"] or e["next_reset"] for e in entries if e["state"] != "disabled")
        summary += (
            f"; the first is usable again at {returns[0]}"
            if returns
            else ("; every token was rejected")
        )
    report: dict[str, Any] = {
        "summary": summary,
        "usable_now": bool(usable),
        "next_reset": iso(next_utc_midnight(now)),
    }
    summary_only = health_summary(entries, now)
    report["counts"] = summary_only["counts"]  # accounts per state, for every key
    if not tc.caller.is_admin:
        # As /health: per-account detail (masked ids, reasons, budgets) is for admin keys.
        report["neurons_remaining_today"] = summary_only["neurons_remaining_today"]
        return report
    return {
        **report,
        "accounts": [
            {
                "number": e["number"],
                "account": e["account"],
                "state": e["state"],
                "until": e["until"],
                "reason": e["reason"],
                "neurons_used_today": e["neurons_used_today"],
                "neurons_left_today": e["neurons_remaining_today"],
                "daily_budget": e["daily_budget"],
                "in_flight": e["in_flight"],
            }
            for e in entries
        ],
    }
