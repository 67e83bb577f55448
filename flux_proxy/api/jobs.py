"""Async image jobs over HTTP: `Prefer: respond-async` (RFC 7240) on the images endpoints, and
`GET` / `DELETE /v1/images/jobs/{id}`.

For callers behind something that cuts long requests off (Cloudflare Tunnel's 100 s and its
524, nginx's `proxy_read_timeout`): the POST is validated in full, then answered `202` at once
with a `Location` to poll; the image is made in the background (`work/jobs.py`), on whichever
replica takes the job, and kept for `JOB_RESULT_TTL_SECONDS` past completion.

A job belongs to the API key that made it (`Caller.name`). Anyone else gets the same 404 as
for a job that does not exist, so ids cannot be probed; admins may read everyone's.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flux_proxy.api import openapi
from flux_proxy.api.body import RawRequest
from flux_proxy.api.caller import caller_of
from flux_proxy.api.image_jobs import encode_request, job_kind
from flux_proxy.api.middleware import note
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import base_url_for
from flux_proxy.errors import ApiError, invalid
from flux_proxy.store.base import JobRecord

JOBS_PATH = "/v1/images/jobs/"


def wants_async(request: Request) -> bool:
    """Does the request carry `Prefer: respond-async` (among other preferences, any case)?"""
    prefer = request.headers.get("prefer")
    if not prefer:
        return False
    for preference in prefer.split(","):
        token = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
        if token == "respond-async":
            return True
    return False


def job_body(job: JobRecord) -> bytes:
    """The job object. A finished result is spliced in as the JSON it was stored as, so a poll
    never re-parses megabytes of base64."""
    return orjson.dumps(
        {
            "id": job.id,
            "object": "image.job",
            "status": job.status,
            "created_at": int(job.created_at),
            "completed_at": int(job.completed_at) if job.completed_at is not None else None,
            "result": orjson.Fragment(job.result) if job.result is not None else None,
            "error": job.error,
        }
    )


def _job_response(job: JobRecord, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        job_body(job), status_code=status, headers=headers, media_type="application/json"
    )


async def submit_image_job(
    request: Request,
    raw: RawRequest,
    image_request: ImageRequest,
    options: dict,
    *,
    edit: bool,
    build,
) -> Response:
    """Queue an already validated images request; answer 202 with the queued job. `options`
    are the work layer's (`work_options`): an Idempotency-Key, an SDK retry and the cache
    policy travel with the job to its `produce` call. `build` is the validator the route used
    (generations and edits, or variations); the worker validates again with the same one."""
    svc = request.app.state.services
    if image_request.stream:
        raise invalid(
            "stream cannot be combined with Prefer: respond-async; poll the job instead",
            param="stream",
            code="unsupported_parameter",
        )
    # The key's model list and quota, checked while a 403 or 429 can still be the answer
    # (as for a stream); the worker holds the quota itself when it makes the image. A repeat
    # (Idempotency-Key, SDK retry) may be a replay that costs nothing: its worker decides.
    repeat = options.get("idempotency_key") or options.get("sdk_retry")
    if svc.quota is not None and not repeat:
        await svc.quota.check(caller_of(request.scope), image_request)
    needs_base = image_request.response_format != "b64_json"  # URL entries are absolute
    base_url = base_url_for(request, svc.settings) if needs_base else ""
    job = await svc.jobs.submit(
        owner=options.get("caller") or caller_of(request.scope).name,
        kind=job_kind(build, edit),
        request=encode_request(raw),
        meta={
            "model": image_request.job.model.short_name,
            "base_url": base_url,
            "request_id": request.scope["state"]["request_id"],
            "idempotency_key": options.get("idempotency_key"),
            "sdk_retry": bool(options.get("sdk_retry")),
            "cache": str(options.get("cache") or "use"),
        },
    )
    note(request.scope, job_id=job.id, respond_async=True)
    return _job_response(
        job,
        202,
        {"location": JOBS_PATH + job.id, "preference-applied": "respond-async"},
    )


async def _owned_job(request: Request) -> JobRecord:
    svc = request.app.state.services
    job_id = request.path_params["job_id"]
    job = await svc.jobs.get(job_id)
    if job is None or not caller_of(request.scope).owns(job.owner):
        raise ApiError(404, f"no job {job_id!r}, or it has expired", code="job_not_found")
    return job


async def get_job(request: Request) -> Response:
    return _job_response(await _owned_job(request))


async def cancel_job(request: Request) -> Response:
    job = await _owned_job(request)
    cancelled = await request.app.state.services.jobs.cancel(job.id)
    if cancelled is None:  # expired between the two reads
        raise ApiError(404, f"no job {job.id!r}, or it has expired", code="job_not_found")
    return _job_response(cancelled)


def job_routes() -> list[BaseRoute]:
    return [
        Route(JOBS_PATH + "{job_id}", get_job, methods=["GET"]),
        Route(JOBS_PATH + "{job_id}", cancel_job, methods=["DELETE"]),
    ]


# --- /openapi.json ---------------------------------------------------------------------------
_JOB = openapi.add_schema(
    "ImageJob",
    {
        "type": "object",
        "required": ["id", "object", "status", "created_at", "completed_at", "result", "error"],
        "properties": {
            "id": {"type": "string", "pattern": "^imgjob_"},
            "object": {"const": "image.job"},
            "status": {"enum": ["queued", "in_progress", "completed", "failed", "cancelled"]},
            "created_at": {"type": "integer"},
            "completed_at": {"type": ["integer", "null"]},
            "result": {
                "anyOf": [openapi.ref("ImagesResponse"), {"type": "null"}],
                "description": "The ImagesResponse, once completed, in the request's own "
                "response_format.",
            },
            "error": {
                "type": ["object", "null"],
                "description": "The OpenAI error object, once failed.",
            },
        },
    },
)
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ASYNC_NOTE = (
    "Jobs are made by sending `Prefer: respond-async` with POST /v1/images/generations, "
    "/v1/images/edits or /v1/images/variations: the request is validated, then answered 202 "
    "with this job object and a `Location` to poll. Only the key that made a job reads it "
    "(others get 404; admin keys read all)."
)
openapi.add_operation(
    JOBS_PATH + "{job_id}",
    "get",
    openapi.operation(
        "retrieveImageJob",
        "Poll an async image job",
        description=_ASYNC_NOTE,
        ok=openapi.json_ok("The job.", _JOB),
        errors_=("401", "404"),
    )
    | {"parameters": [_JOB_ID]},
)
openapi.add_operation(
    JOBS_PATH + "{job_id}",
    "delete",
    openapi.operation(
        "cancelImageJob",
        "Cancel an async image job that is still queued",
        description="A job is queued until its call is sent (also while a worker waits for an "
        "account slot); 409 once it is in_progress (sent) or done.",
        ok=openapi.json_ok("The cancelled job.", _JOB),
        errors_=("401", "404", "409"),
    )
    | {"parameters": [_JOB_ID]},
)
