"""The client's hot-path shortcuts give exactly what the slow, obvious way gives.

`_parse_envelope` cuts the base64 image out of the raw answer instead of letting a JSON parser
build it; `encode_multipart` joins the form into one body instead of letting aiohttp write it
part by part. Both must agree with a real JSON parser and a real multipart parser, and fall back
(not guess) on anything unusual.
"""

from __future__ import annotations

import base64
import email
import email.policy

import orjson
import pytest

from flux_proxy.job import ReferenceImage
from flux_proxy.upstream.client import _parse_envelope, encode_multipart

# Every byte value, so the text has both `+` and `/` (which a JSON writer may escape as `\/`).
B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3).decode()
assert "/" in B64 and "+" in B64


def _full_parse(payload: bytes):
    body = orjson.loads(payload)
    return body["result"]["image"]


@pytest.mark.parametrize(
    "payload",
    [
        orjson.dumps({"result": {"image": B64}, "success": True, "errors": [], "messages": []}),
        # Python's json.dumps spacing, as the emulator and many servers write it.
        b'{"result": {"image" : "' + B64.encode() + b'"}, "success": true}',
        b'{\n  "success": true,\n  "result": {\n    "image":\n\t"' + B64.encode() + b'"\n  }\n}',
        # another "image" key earlier in the document: the cut must not take it
        orjson.dumps({"meta": {"image": "decoy"}, "result": {"image": B64}}),
        # "image" as a value, not a key
        orjson.dumps({"type": "image", "result": {"image": B64}}),
        # an escaped slash: only a real JSON parser reads that right
        b'{"result":{"image":"' + B64.replace("/", "\\/").encode() + b'"}}',
        # a key that ends in an escaped quote followed by image
        b'{"say \\"image": "decoy", "result": {"image": "' + B64.encode() + b'"}}',
        orjson.dumps({"result": {"image": "data:image/png;base64," + B64}}),
    ],
)
def test_envelope_image_matches_a_full_json_parse(payload):
    body, image = _parse_envelope(payload)
    assert image == _full_parse(payload)
    assert isinstance(body, dict)
    assert body.get("result", {}).get("image") in ("", image)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"result":{"image":""},"success":true}',
        b'{"result":{"image":null},"success":true}',
        b'{"result":{},"success":true}',
        b'{"result":{"image":12}}',
        # a key ending in an escaped quote and "image": its value is not the image
        b'{"say \\"image": "decoy", "result": {"image": ""}}',
    ],
)
def test_envelope_without_an_image_string_gives_none(payload):
    body, image = _parse_envelope(payload)
    assert image in (None, "")
    assert body == orjson.loads(payload) or body["result"]["image"] == ""


def test_envelope_that_is_not_json_gives_no_body_and_no_image():
    assert _parse_envelope(b'<html>"image": "x"</html>') == (None, None)


def test_envelope_with_non_ascii_in_the_image_falls_back_to_the_parser():
    payload = '{"result":{"image":"abcé"}}'.encode()
    assert _parse_envelope(payload)[1] == "abcé"


def test_envelope_error_answer_keeps_its_errors_for_classification():
    payload = orjson.dumps(
        {"result": None, "success": False, "errors": [{"code": 3036, "message": "daily"}]}
    )
    body, image = _parse_envelope(payload)
    assert image is None
    assert body["errors"][0]["code"] == 3036


def _parts(body: bytes, content_type: str) -> dict:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_filename(),
            part.get_content_type(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


def test_multipart_body_parses_back_to_the_same_fields_and_files():
    prompt = 'a "quoted" prompt\r\nover two lines, with ünïcode and --dashes--'
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    ref = ReferenceImage(data=png, mime="image/png", width=8, height=8)
    body, content_type = encode_multipart(
        {"prompt": prompt, "width": 512, "seed": 0}, [("input_image_0", "png", ref)]
    )
    assert content_type.startswith("multipart/form-data; boundary=")
    parts = _parts(body, content_type)
    assert parts["prompt"][2] == prompt.encode()
    assert parts["width"][2] == b"512"
    assert parts["seed"][2] == b"0"
    assert parts["input_image_0"] == ("input_image_0.png", "image/png", png)


def test_multipart_boundary_is_fresh_for_every_body():
    first = encode_multipart({"prompt": "x"}, [])[1]
    second = encode_multipart({"prompt": "x"}, [])[1]
    assert first != second
