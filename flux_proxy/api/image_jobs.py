"""Image jobs: what an async `POST /v1/images/generations|edits` keeps, and how a worker turns
it into the ImagesResponse its owner collects.

The job keeps the request as it arrived (fields and uploaded files, `RawRequest`), not the
validated `ImageRequest`: the worker validates it again with `build_image_request`, so a job
taken up after a restart or on another replica is read by that process's own rules, and no
second serialisation of `ImageRequest` has to track its fields. It was fully validated
before the 202, so a second validation fails only if the settings changed in between (then the
job fails with that 400).
"""

from __future__ import annotations

import base64
import contextlib
import logging

import orjson

from flux_proxy.api.body import RawRequest, UploadedFile
from flux_proxy.api.generate import finish_all
from flux_proxy.api.parse import ImageRequest, build_image_request
from flux_proxy.api.render import images_body
from flux_proxy.api.variations import build_variation_request
from flux_proxy.logs import log_event
from flux_proxy.shutdown import ShutdownSignal
from flux_proxy.store.base import JobRecord
from flux_proxy.work.cache import CachePolicy
from flux_proxy.work.jobs import JobService
from flux_proxy.work.queue import open_queue
from flux_proxy.work.results import WorkResult

GENERATION = "image.generation"
EDIT = "image.edit"
VARIATION = "image.variation"
# How each kind of job is validated again when a worker takes it up: (builder, edit).
BUILDERS = {
    GENERATION: (build_image_request, False),
    EDIT: (build_image_request, True),
    VARIATION: (build_variation_request, True),
}


def job_kind(build, edit: bool) -> str:
    """The job kind for an images request validated by `build` (`edit` as the route has it)."""
    if build is build_variation_request:
        return VARIATION
    return EDIT if edit else GENERATION


def encode_request(raw: RawRequest) -> bytes:
    return orjson.dumps(
        {
            "fields": raw.fields,
            "is_form": raw.is_form,
            "files": [
                {
                    "field": f.field,
                    "filename": f.filename,
                    "content_type": f.content_type,
                    "data": base64.b64encode(f.data).decode("ascii"),
                }
                for f in raw.files
            ],
        }
    )


def decode_request(data: bytes) -> RawRequest:
    value = orjson.loads(data)
    files = [
        UploadedFile(f["field"], f["filename"], f["content_type"], base64.b64decode(f["data"]))
        for f in value["files"]
    ]
    return RawRequest(value["fields"], files, is_form=value["is_form"])


async def produce(svc, image_request: ImageRequest, job: JobRecord, before_send) -> WorkResult:
    """The one place a job reaches for images: the work layer's entry point, with what the
    submitting request asked of it (Idempotency-Key, SDK retry, cache policy). `before_send`
    moves the job to `in_progress` before its first upstream call (`work/job_start.py`)."""
    meta = job.meta
    return await svc.work.produce(
        image_request,
        caller=job.owner,
        request_id=meta.get("request_id") or job.id,
        idempotency_key=meta.get("idempotency_key"),
        sdk_retry=bool(meta.get("sdk_retry")),
        cache=CachePolicy(meta.get("cache") or CachePolicy.USE),
        before_send=before_send,
    )


def image_job_runner(svc):
    """The runner `JobService` calls for image jobs: validate, make, render, as JSON bytes."""

    async def run(job: JobRecord, before_send) -> bytes:
        raw = decode_request(job.request)
        build, edit = BUILDERS[job.kind]
        image_request = await build(raw, svc.settings, edit=edit)
        result = await produce(svc, image_request, job, before_send)
        outcome = await finish_all(result, image_request)
        body = await images_body(
            outcome,
            image_request,
            created=result.created,
            result_id=result.id,
            image_store=svc.images,
            base_url=job.meta.get("base_url", ""),
        )
        svc.metrics.child(
            svc.metrics.images,
            image_request.job.model.short_name,
            image_request.response_format or "both",
        ).inc(len(outcome.images))
        return orjson.dumps(body)

    return run


async def start_jobs(
    svc, stack: contextlib.AsyncExitStack, shutdown: ShutdownSignal | None = None
) -> JobService:
    """Open the work queue and start the job workers for the app's lifespan; both stop when
    `stack` unwinds (the workers first, within what is left of the shutdown grace). At the
    `shutdown` signal the workers stop taking jobs; the ones running go on."""
    settings = svc.settings
    queue = open_queue(settings, svc.clock)
    try:
        await queue.open()
    except Exception as exc:  # Redis away at start: workers retry until it answers
        log_event("job_queue_unavailable", logging.WARNING, error=type(exc).__name__)
    stack.push_async_callback(queue.close)
    service = JobService(
        svc.store,
        queue,
        svc.clock,
        svc.metrics,
        workers=settings.job_workers,
        lease=settings.job_lease_seconds,
        result_ttl=settings.job_result_ttl_seconds,
    )
    runner = image_job_runner(svc)
    for kind in BUILDERS:
        service.register(kind, runner)
    await service.start()
    shutdown = shutdown or ShutdownSignal()
    shutdown.on_signal(service.drain)

    async def stop() -> None:
        await service.stop(shutdown.remaining(settings.shutdown_grace_seconds))

    stack.push_async_callback(stop)
    return service
