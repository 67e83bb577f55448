"""Fuzzing a live proxy (on the emulator): schemathesis against the OpenAPI document the proxy
serves, and hypothesis for multipart and JSON bodies. Whatever arrives: no 5xx, no hang, and
every error in the OpenAI shape.

Examples are bounded (and the example database is off) so the whole file stays well under a
minute and every run is the same run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from conftest import picture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import HTTP, assert_openai_error
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flux_proxy.api.openapi import openapi_document

REQUEST_TIMEOUT = 20.0  # a hang shows as a failed example, not a stuck run
FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
# The document itself is compared whole below; schemathesis leaves its own source out.
OPERATIONS = [
    result.ok().label
    for result in schemathesis.openapi.from_dict(openapi_document()).get_all_operations()
    if result.ok().path != "/openapi.json"
]
# Negative data needs something to break: a body, or a parameter with more than a string's
# freedom (a path parameter that takes any string cannot be made invalid).
NEGATABLE = ["POST /v1/images/generations", "POST /v1/images/edits"]
CASES = [(GenerationMode.POSITIVE, label) for label in OPERATIONS] + [
    (GenerationMode.NEGATIVE, label) for label in NEGATABLE
]


@pytest.fixture
def fuzz_proxy(make_proxy, emulator):
    """A proxy whose accounts never run out, so valid requests keep reaching the emulator."""
    HTTP.post(emulator.root + "/__emulator/config", json={"daily_neurons": 0}).raise_for_status()
    return make_proxy(daily_neurons=0, request_deadline=REQUEST_TIMEOUT)


def openai_shaped_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx with a body carries `{"error": {message, type, param, code}}`."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    assert_openai_error(response.status_code, json.loads(response.content))
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    openai_shaped_errors,
]


def test_the_served_document_is_the_one_fuzzed(fuzz_proxy):
    response = HTTP.get(fuzz_proxy.url + "/openapi.json")  # no key needed
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(openapi_document()))


@pytest.mark.parametrize(("mode", "label"), CASES, ids=[f"{m.value} {op}" for m, op in CASES])
def test_schemathesis_finds_no_5xx_and_only_openai_shaped_errors(fuzz_proxy, label, mode):
    schema = schemathesis.openapi.from_url(fuzz_proxy.url + "/openapi.json")
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)
    auth = fuzz_proxy.auth
    transport = {"base_url": fuzz_proxy.url, "headers": auth}

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
    def run(case):
        response = case.call(timeout=REQUEST_TIMEOUT, **transport)
        case.validate_response(response, checks=CHECKS, headers=auth, transport_kwargs=transport)

    run()


# --- multipart and JSON bodies by hypothesis ------------------------------------------------

KNOWN_FIELDS = [
    "prompt",
    "model",
    "n",
    "size",
    "width",
    "height",
    "steps",
    "seed",
    "guidance",
    "negative_prompt",
    "response_format",
    "output_format",
    "output_compression",
    "quality",
    "background",
    "stream",
    "partial_images",
    "images",
    "image",
    "image[]",
    "input_image_0",
    "input_image_3",
    "input_image_9",
    "mask",
]
PNG = picture(48, 48, "PNG")
JPEG = picture(600, 40, "JPEG")

names = st.one_of(st.sampled_from(KNOWN_FIELDS), st.text(min_size=1, max_size=20))
texts = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "10",
            "11",
            "true",
            "auto",
            "256x256",
            "b64_json",
            "url",
            "png",
            "flux-2-klein-4b",
            "dall-e-3",
            "@cf/black-forest-labs/flux-2-dev",
            "data:image/png;base64,",
            "http://127.0.0.1:9/x.png",
            "1e309",
            "NaN",
            "٣",
        ]
    ),
    st.text(max_size=60),
)
file_bodies = st.one_of(
    st.just(PNG), st.just(JPEG), st.just(b""), st.binary(max_size=300), st.just(PNG[:40])
)
file_types = st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain"])


@FUZZ
@given(
    fields=st.lists(st.tuples(names, texts), max_size=8),
    files=st.lists(st.tuples(names, file_bodies, file_types), max_size=5),
    path=st.sampled_from(["/v1/images/generations", "/v1/images/edits"]),
    prompt=st.booleans(),
)
def test_random_multipart_bodies_never_cause_a_5xx(fuzz_proxy, fields, files, path, prompt):
    data = [("prompt", "a fuzzed fox")] if prompt else []
    data += [("size", "256x256"), ("model", "flux-2-klein-4b")] if prompt else []
    data += fields
    uploads = [(name, (f"f{i}.bin", body, kind)) for i, (name, body, kind) in enumerate(files)]
    if not uploads:
        uploads = [("input_image_0", ("x.png", PNG, "image/png"))]
    response = HTTP.post(
        fuzz_proxy.url + path,
        headers=fuzz_proxy.auth,
        data=_as_form(data),
        files=uploads,
        timeout=REQUEST_TIMEOUT,
    )
    _check(response)


def _as_form(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


@FUZZ
@given(
    body=st.binary(max_size=2000),
    boundary=st.one_of(
        st.just("XyZ"),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
    ),
)
def test_malformed_multipart_never_causes_a_5xx(fuzz_proxy, body, boundary):
    prefix = f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nfox\r\n'
    payload = prefix.encode("utf-8", errors="replace") + body
    content_type = "multipart/form-data; boundary=" + boundary
    try:
        content_type.encode("latin-1")
    except UnicodeEncodeError:
        content_type = "multipart/form-data; boundary=XyZ"
    response = HTTP.post(
        fuzz_proxy.url + "/v1/images/edits",
        headers={
            **fuzz_proxy.auth,
            "Content-Type": content_type.replace("\r", "").replace("\n", ""),
        },
        content=payload,
        timeout=REQUEST_TIMEOUT,
    )
    _check(response)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    body=st.dictionaries(st.sampled_from(KNOWN_FIELDS), json_values, max_size=8),
    path=st.sampled_from(["/v1/images/generations", "/v1/images/edits"]),
)
def test_random_json_bodies_never_cause_a_5xx(fuzz_proxy, body, path):
    body.setdefault("size", "256x256")
    body.setdefault("model", "flux-2-klein-4b")
    response = HTTP.post(
        fuzz_proxy.url + path, headers=fuzz_proxy.auth, json=body, timeout=REQUEST_TIMEOUT
    )
    _check(response)


def _check(response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert_openai_error(response.status_code, response.json(), response.headers)
    elif response.headers["content-type"].startswith("application/json"):
        assert response.json()["data"]
