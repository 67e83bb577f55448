"""A live multipart request (`/v1/images/edits`, Starlette's form parser in `api/body.py`) cut
short before its closing boundary is a 400 `invalid_multipart` with no upstream call, as
`POST /v1/files` already refuses one (`api/upload_stream.py`): an image part that happens to
decode must not be taken for a whole form. Real uvicorn proxy and emulator over HTTP."""

from __future__ import annotations

import httpx
import pytest


def _edit_body(png: bytes) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST",
        "http://proxy/v1/images/edits",
        data={"model": "flux-2-klein-4b", "prompt": "make it blue", "response_format": "b64_json"},
        files={"image": ("in.png", png, "image/png")},
    )
    return request.read(), request.headers["content-type"]


@pytest.mark.parametrize("cut", ["closing boundary", "inside the image"])
def test_an_edits_form_cut_short_is_refused_before_any_call(make_proxy, emulator, png, cut):
    proxy = make_proxy()
    image = png(64, 64)
    body, content_type = _edit_body(image)
    headers = {**proxy.auth, "content-type": content_type}
    whole = httpx.post(proxy.base_url + "/images/edits", content=body, headers=headers, timeout=30)
    assert whole.status_code == 200, whole.text  # the same form, whole, is served
    assert len(emulator.calls()) == 1

    closing = body.rindex(b"\r\n--")  # the image part's data ends here
    short = body[:closing] if cut == "closing boundary" else body[: closing - len(image) // 2]
    answer = httpx.post(
        proxy.base_url + "/images/edits", content=short, headers=headers, timeout=30
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_multipart")
    assert "closing boundary" in error["message"]
    assert len(emulator.calls()) == 1  # nothing went upstream
