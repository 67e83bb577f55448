"""Prometheus metrics. One `Metrics` per app, each with its own registry, so two proxies in
one process (tests, benchmarks) never mix their figures."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Labelled children by (metric, labels), and each account's current state: the hot
        # path asks for the same few children on every request, and `labels()` validates and
        # locks each time.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._account_states: dict[int, str] = {}
        self.http_requests = Counter(
            "flux_proxy_http_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "flux_proxy_http_request_seconds",
            "Time to answer a request, end to end",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "flux_proxy_in_flight_requests", "Requests being answered now", registry=r
        )
        self.upstream_calls = Counter(
            "flux_proxy_upstream_calls",
            "Calls made to Workers AI, by account, outcome and Cloudflare error code",
            ["account", "model", "outcome", "cf_code"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "flux_proxy_upstream_seconds",
            "Workers AI call latency",
            ["account", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.accounts_skipped = Counter(
            "flux_proxy_accounts_skipped",
            "Accounts passed over without a call, and why",
            ["account", "reason"],
            registry=r,
        )
        self.neurons = Counter(
            "flux_proxy_neurons",
            "Neurons spent, by account and model",
            ["account", "model"],
            registry=r,
        )
        self.account_state = Gauge(
            "flux_proxy_account_state",
            "1 for the state each account is in (available, cooling, parked, disabled)",
            ["account", "state"],
            registry=r,
        )
        self.duplicate_spend = Counter(
            "flux_proxy_duplicate_spend",
            "Calls that may have been billed without giving an image (no answer after the "
            "request was sent); the image is then made elsewhere, so it may be paid twice",
            ["account", "model"],
            registry=r,
        )
        self.images = Counter(
            "flux_proxy_images",
            "Images returned to callers",
            ["model", "response_format"],
            registry=r,
        )
        # --- async jobs ---
        self.jobs = Counter(
            "flux_proxy_jobs",
            "Async jobs by what happened: submitted, completed, failed, cancelled, and resumed "
            "(taken up again after the worker running it died; also counted in duplicate_spend)",
            ["event"],
            registry=r,
        )

        # --- teams: per-key figures, labelled by the key's name (never the key) ---
        self.key_images = Counter(
            "flux_proxy_key_images",
            "Images made for each named key, by model",
            ["key_name", "model"],
            registry=r,
        )
        self.key_neurons = Counter(
            "flux_proxy_key_neurons",
            "Neurons spent for each named key",
            ["key_name"],
            registry=r,
        )
        self.key_refusals = Counter(
            "flux_proxy_key_refusals",
            "Requests a key's quota or model list refused, before any upstream call",
            ["key_name", "reason"],
            registry=r,
        )

        # --- work: hang-up-safe work, kept results, the seeded cache (issue 9) ---
        self.finished_after_hangup = Counter(
            "flux_proxy_images_finished_after_hangup",
            "Images whose upstream call was already sent when the caller left, finished anyway",
            ["model"],
            registry=r,
        )
        self.results_kept = Counter(
            "flux_proxy_results_kept",
            "Finished results kept for a retry because their caller had left",
            registry=r,
        )
        self.results_collected = Counter(
            "flux_proxy_results_collected",
            "Kept results handed to a repeat (Idempotency-Key, SDK retry) instead of paying again",
            registry=r,
        )
        self.cache_lookups = Counter(
            "flux_proxy_cache_lookups",
            "Seeded-cache lookups, by result (hit includes waiting for an identical flight)",
            ["model", "result"],
            registry=r,
        )
        self.cache_neurons_saved = Counter(
            "flux_proxy_cache_neurons_saved",
            "Neurons not spent because a seeded image came from the cache",
            ["model"],
            registry=r,
        )
        # --- batches (issue 10) ---
        self.batch_lines = Counter(
            "flux_proxy_batch_lines",
            "Batch lines recorded by this replica, by outcome (completed, failed, expired, "
            "cancelled), and lines given back unrun (released: no account could take them)",
            ["outcome"],
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once per label set."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_account_state(self, account: int, state: str) -> None:
        if self._account_states.get(account) == state:
            return  # the gauges already say so; only this method sets them
        for name in ("available", "cooling", "parked", "disabled"):
            self.account_state.labels(str(account), name).set(1 if name == state else 0)
        self._account_states[account] = state

    def render(self) -> bytes:
        return generate_latest(self.registry)
