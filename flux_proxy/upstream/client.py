"""The Workers AI REST client: one call per `run`, every outcome an `Attempt`.

Everything about Cloudflare's wire format lives here and in `classify`: the body per model
(multipart for FLUX.2, JSON for the rest), the answer per model (base64 in a JSON envelope or
raw image bytes), `cf-ai-neurons`, `Retry-After`. Upstream trouble never raises.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import aiohttp
import orjson

from flux_proxy.job import GeneratedImage, ImageJob, ReferenceImage, sniff_mime
from flux_proxy.logs import log_event
from flux_proxy.settings import AccountConfig
from flux_proxy.upstream.classify import (
    Attempt,
    OutcomeKind,
    classify,
    classify_exception,
    parse_neurons,
)

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class WorkersAIClient:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._session = session
        self._owns_session = session is None

    async def start(self) -> None:
        if self._session is None:
            # The pool's per-account slots bound concurrency; the connector should not add a
            # second, smaller limit that makes calls queue invisibly.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
            self._owns_session = True

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("WorkersAIClient.start() was not called")
        return self._session

    def run_url(self, account: AccountConfig, job: ImageJob) -> str:
        # Model ids contain `@` and `/`; Cloudflare expects them as they are, not encoded.
        return f"{self.base_url}/accounts/{account.account_id}/ai/run/{job.model.id}"

    async def run(self, account: AccountConfig, job: ImageJob) -> Attempt:
        started = time.monotonic()
        if job.model.body == "json" and job.references:
            # An image as a JSON byte array is ~3.6 characters a byte: some 100 ms for a 3 MB
            # file, too long to hold the event loop.
            body, content_type = await asyncio.to_thread(build_body, job)
        else:
            body, content_type = build_body(job)
        headers = _auth(account)
        headers["Content-Type"] = content_type
        try:
            async with self.session.post(
                self.run_url(account, job), data=body, headers=headers, timeout=self.timeout
            ) as response:
                payload = await read_whole(response)
                return read_answer(
                    account,
                    job,
                    response.status,
                    response.headers,
                    payload,
                    latency=time.monotonic() - started,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return classify_exception(exc, latency=time.monotonic() - started)
        except Exception as exc:  # still an Attempt, never raised, but worth a warning
            log_event("upstream_client_error", logging.WARNING, error=type(exc).__name__)
            return classify_exception(exc, latency=time.monotonic() - started)

    async def verify_token(self, account: AccountConfig) -> bool | None:
        """True: the token works; False: Cloudflare rejects it; None: could not tell."""
        try:
            async with self.session.get(
                f"{self.base_url}/user/tokens/verify", headers=_auth(account), timeout=self.timeout
            ) as response:
                if response.status in (401, 403):
                    return False
                if response.status != 200:
                    return None
                body = _parse_json(await response.read())
        except Exception:
            return None
        if not isinstance(body, dict):
            return None
        return body.get("success") is True

    async def get_envelope(
        self, account: AccountConfig, path: str, params: dict[str, str]
    ) -> tuple[int, Any]:
        """A GET on the account's API (the free catalogue endpoints): status and parsed body
        (None when it was no JSON). Connection trouble raises aiohttp's errors."""
        url = f"{self.base_url}/accounts/{account.account_id}/{path}"
        async with self.session.get(
            url, params=params, headers=_auth(account), timeout=self.timeout
        ) as response:
            return response.status, _parse_json(await response.read())


async def read_whole(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, joined once.

    `response.read()` copies a multi-megabyte answer twice (the chunks buffered at each
    wake-up are joined, then those blocks are joined); taking the chunks as they arrived and
    joining them once saves a full copy of every image.
    """
    chunks = [chunk async for chunk, _ in response.content.iter_chunks()]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _auth(account: AccountConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.token.get_secret_value()}"}


# --- request -----------------------------------------------------------------------------


def upstream_fields(job: ImageJob) -> dict[str, Any]:
    """The scalar fields the model takes, under its upstream names; only those that are set."""
    model = job.model
    fields: dict[str, Any] = {"prompt": job.prompt}
    if model.takes_negative_prompt and job.negative_prompt:
        fields["negative_prompt"] = job.negative_prompt
    if model.takes_size:
        if job.width is not None:
            fields["width"] = job.width
        if job.height is not None:
            fields["height"] = job.height
    if model.steps_field and model.takes_steps and job.steps is not None:
        fields[model.steps_field] = job.steps
    if model.guidance_range is not None and job.guidance is not None:
        fields["guidance"] = job.guidance
    if model.takes_seed and job.seed is not None:  # seed 0 is a seed
        fields["seed"] = job.seed
    if model.takes_strength and job.strength is not None:
        fields["strength"] = job.strength
    return fields


def image_fields(job: ImageJob) -> dict[str, list[int]]:
    """img2img / inpainting in a JSON body: `image` and `mask` as arrays of the files' bytes,
    as the catalogue's schema declares them (`mask` has no base64 form, so neither gets one)."""
    model = job.model
    fields: dict[str, list[int]] = {}
    if model.body != "json" or not model.takes_references or not job.references:
        return fields
    fields["image"] = list(job.references[0].data)
    if model.takes_mask and job.mask is not None:
        fields["mask"] = list(job.mask.data)
    return fields


def build_body(job: ImageJob) -> tuple[bytes, str]:
    """The request body and its content type."""
    fields = upstream_fields(job)
    if job.model.body == "json":
        return orjson.dumps(fields | image_fields(job)), "application/json"
    # FLUX.2 wants multipart even for a prompt alone.
    files = [
        (f"input_image_{index}", _EXTENSIONS.get(reference.mime, "bin"), reference)
        for index, reference in enumerate(job.references[: job.model.max_references])
    ]
    return encode_multipart(fields, files)


def encode_multipart(
    fields: dict[str, Any], files: list[tuple[str, str, ReferenceImage]]
) -> tuple[bytes, str]:
    """A multipart/form-data body in one piece.

    aiohttp's FormData writes a form part by part, one socket write for each boundary,
    header block and value: some twenty small TCP segments for a prompt-only FLUX.2 call,
    each a system call here and a wake-up upstream. Joined first, the body is one write.
    The boundary is random per call, so no prompt can be written to contain it.
    """
    boundary = secrets.token_hex(16)
    dash = f"--{boundary}\r\n".encode()
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks += [
            dash,
            f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode(),
            str(value).encode("utf-8"),
            b"\r\n",
        ]
    for name, extension, reference in files:
        chunks += [
            dash,
            f'Content-Disposition: form-data; name="{name}"; filename="{name}.{extension}"\r\n'
            f"Content-Type: {reference.mime}\r\n\r\n".encode(),
            reference.data,
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# --- answer ------------------------------------------------------------------------------


def read_answer(
    account: AccountConfig,
    job: ImageJob,
    status: int,
    headers: Any,
    payload: bytes,
    *,
    latency: float,
) -> Attempt:
    """Turn one HTTP answer into an Attempt (success with an image, or a classified failure)."""
    neurons = parse_neurons(headers.get("cf-ai-neurons"))
    content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    model = job.model

    if status == 200 and model.answer == "raw_bytes" and not content_type.endswith("json"):
        # The bytes say what the image is, not the label: SDXL-lightning has been seen sending
        # JPEG bytes as image/png. URL extension, output_format and conversions follow this.
        mime = sniff_mime(payload)
        if mime != "application/octet-stream":
            if mime != content_type:
                log_event(
                    "upstream_mislabelled_image",
                    logging.DEBUG,
                    model=model.short_name,
                    labelled=content_type,
                    actual=mime,
                )
            image = GeneratedImage.from_bytes(
                payload, mime=mime, account=account.number, neurons=neurons, seed=job.seed
            )
            return _success(image, neurons, latency)
        if content_type.startswith("image/"):
            message = "Workers AI answered with bytes that are no image"
            if not payload:
                message = "Workers AI answered with an empty image"
            return _no_image(status, neurons, latency, message)

    if status == 200 and model.answer == "base64_json":
        body, b64 = _parse_envelope(payload)
        b64 = _envelope_image(body, b64)
        if b64 is not None:
            # Passed through as base64: decoding megabytes only to re-encode them is waste.
            image = GeneratedImage.from_b64(
                b64, account=account.number, neurons=neurons, seed=job.seed
            )
            if image.mime == "application/octet-stream":
                # The first bytes are no PNG, JPEG or WebP: a broken answer, not an image to
                # hand a caller. Another account may do better.
                return _no_image(status, neurons, latency, "Workers AI answered with no image")
            return _success(image, neurons, latency)
    else:
        body = _parse_json(payload)

    attempt = classify(status, headers, body, latency=latency, neurons=neurons)
    if status == 200 and body is None and attempt.kind is OutcomeKind.TRANSIENT:
        attempt.message = "Workers AI answered with something that is neither JSON nor an image"
    return attempt


def _parse_envelope(payload: bytes) -> tuple[Any, str | None]:
    """The parsed answer and its `result.image` string (None when there is none).

    A JSON parser builds the multi-megabyte base64 string character by character (about
    3 ms per MB with orjson, most of the proxy's own time per request). So the image is cut
    out of the raw bytes and only the small rest is parsed; the rest must then show an empty
    `result.image` exactly where the cut was, which proves the cut was the right string.
    Anything unusual (escapes, another layout) takes the ordinary full parse.
    """
    cut = _cut_image(payload)
    if cut is not None:
        start, end = cut
        rest = _parse_json(payload[:start] + payload[end:])
        result = rest.get("result") if isinstance(rest, dict) else None
        if isinstance(result, dict) and result.get("image") == "":
            try:
                # Straight from the buffer: slicing first would copy megabytes once more.
                return rest, str(memoryview(payload)[start:end], "ascii")
            except UnicodeDecodeError:
                pass
    body = _parse_json(payload)
    result = body.get("result") if isinstance(body, dict) else None
    image = result.get("image") if isinstance(result, dict) else None
    return body, image if isinstance(image, str) else None


_IMAGE_KEY = b'"image"'
_JSON_SPACE = b" \t\r\n"


def _cut_image(payload: bytes) -> tuple[int, int] | None:
    """Where the value of the first `"image": "..."` lies: (first, past last) byte of its text,
    if it is a string without escapes. A `"image"` whose first quote is not escaped is a key
    or a whole value, never part of another string, so this cannot land inside a message."""
    key = payload.find(_IMAGE_KEY)
    if key < 0 or payload[key - 1 : key] == b"\\":  # a quote after a backslash is text
        return None
    at = key + len(_IMAGE_KEY)
    while at < len(payload) and payload[at] in _JSON_SPACE:
        at += 1
    if payload[at : at + 1] != b":":
        return None
    at += 1
    while at < len(payload) and payload[at] in _JSON_SPACE:
        at += 1
    if payload[at : at + 1] != b'"':
        return None
    start = at + 1
    end = payload.find(b'"', start)
    if end < 0 or payload.find(b"\\", start, end) >= 0:
        return None
    return start, end


def _envelope_image(body: Any, image: str | None) -> str | None:
    if not isinstance(body, dict) or body.get("success") is False:
        return None
    if not image:
        return None
    if image.startswith("data:"):  # tolerate a data URL; the payload after the comma is base64
        image = image.partition(",")[2]
    return image or None


def _parse_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def _success(image: GeneratedImage, neurons: float | None, latency: float) -> Attempt:
    return Attempt(
        kind=OutcomeKind.SUCCESS,
        status=200,
        code=None,
        message="ok",
        retry_after=None,
        neurons=neurons,
        image=image,
        latency=latency,
    )


def _no_image(status: int, neurons: float | None, latency: float, message: str) -> Attempt:
    return Attempt(
        kind=OutcomeKind.TRANSIENT,
        status=status,
        code=None,
        message=message,
        retry_after=None,
        neurons=neurons,
        image=None,
        latency=latency,
    )
