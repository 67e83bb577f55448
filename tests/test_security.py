"""Security and bad input: API keys, limits (bodies, images, decompression bombs, prompts, slow
clients), CORS, and no fetching of caller-supplied URLs (no SSRF).

Raw sockets are used where no well-behaved client library would go: a Content-Length far over
the limit with no body behind it, a chunked body that never ends, a body trickled a byte at a
time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import select
import socket
import struct
import time
import zlib

import httpx
import pytest
from conftest import picture
from procs import ACCOUNTS, API_KEY, account_id, run_check, shared_emulator, start_proxy
from reliability import (
    HTTP,
    SMALL,
    assert_openai_error,
    connect,
    emulator_calls,
    raw_call,
    read_response,
    request_head,
)
from starlette.responses import PlainTextResponse

from flux_proxy.api.middleware import ApiKeyMiddleware
from flux_proxy.api.routes import STATIC_DIR

KEYS = ["key-one-7f3a9c", "key-two-b81d44", "key-three-0c6e25"]
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"


def _png(width: int = 64, height: int = 64) -> bytes:
    return picture(width, height, "PNG")


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --- API keys ------------------------------------------------------------------


@pytest.fixture
def keyed_proxy(make_proxy):
    return make_proxy(api_master_key=",".join(KEYS))


REFUSED = {
    "missing": None,
    "wrong key": "Bearer not-a-key-at-all",
    "empty bearer": "Bearer ",
    "scheme only": "Bearer",
    "no scheme": KEYS[0],
    "scheme glued to key": f"Bearer{KEYS[0]}",
    "basic scheme": "Basic " + base64.b64encode(f"user:{KEYS[0]}".encode()).decode(),
    "token scheme": f"Token {KEYS[0]}",
    "all keys as one": "Bearer " + ",".join(KEYS),
    "prefix of a key": f"Bearer {KEYS[0][:-1]}",
    "key with more after it": f"Bearer {KEYS[0]}x",
    "key and junk": f"Bearer {KEYS[0]} extra",
    "different case key": f"Bearer {KEYS[0].upper()}",
}


@pytest.mark.parametrize("header", REFUSED.values(), ids=REFUSED.keys())
def test_requests_without_a_valid_key_get_an_openai_shaped_401(keyed_proxy, emulator, header):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    body = json.dumps({"prompt": "x", **SMALL}).encode()
    for method, path in (("POST", GENERATIONS), ("POST", EDITS), ("GET", "/v1/models")):
        status, response_headers, raw = raw_call(keyed_proxy.url, method, path, headers, body)
        assert status == 401, (path, raw)
        error = assert_openai_error(401, json.loads(raw), response_headers)
        assert error["code"] == "invalid_api_key"
        assert response_headers["www-authenticate"] == "Bearer"
        for key in KEYS:
            assert key not in raw.decode()
    assert emulator_calls(emulator) == []


def test_a_non_ascii_authorization_header_is_a_401_not_a_crash(keyed_proxy):
    sock = connect(keyed_proxy.url)
    with sock:
        head = request_head("GET", "/v1/models", {})
        sock.sendall(head[:-2] + "Authorization: Bearer kéy-öne\r\n\r\n".encode("latin-1"))
        status, _, body = read_response(sock)
    assert status == 401
    assert_openai_error(401, json.loads(body))


@pytest.mark.parametrize(
    "header",
    [f"Bearer {KEYS[0]}", f"bearer {KEYS[1]}", f"BEARER {KEYS[2]}", f"  Bearer   {KEYS[1]}  "],
    ids=["first key", "lower-case scheme", "upper-case scheme", "extra spaces"],
)
def test_each_configured_key_is_accepted_with_any_case_of_scheme(keyed_proxy, emulator, header):
    body = json.dumps({"prompt": "a key that works", **SMALL}).encode()
    headers = {"Authorization": header, "Content-Type": "application/json"}
    status, _, raw = raw_call(keyed_proxy.url, "POST", GENERATIONS, headers, body)
    assert status == 200, raw[:500]


def test_open_routes_need_no_key_and_image_files_are_not_behind_it(keyed_proxy):
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/", "/openapi.json"):
        assert HTTP.get(keyed_proxy.url + path).status_code == 200, path
    missing = HTTP.get(keyed_proxy.url + "/v1/images/files/" + "0" * 32 + ".png")
    assert missing.status_code == 404  # not 401: a file's random name is its credential
    assert_openai_error(404, missing.json())


def test_a_refused_key_is_answered_before_the_body_is_read(keyed_proxy):
    sock = connect(keyed_proxy.url)
    with sock:
        headers = {"Content-Type": "application/json", "Content-Length": str(50 * 1024 * 1024)}
        sock.sendall(request_head("POST", GENERATIONS, headers))
        status, _, body = read_response(sock, timeout=5)
    assert status == 401
    assert_openai_error(401, json.loads(body))


async def _ask(middleware: ApiKeyMiddleware, authorization: str | None) -> int:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": headers}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(scope, receive, send)
    return sent[0]["status"]


async def _ok(scope, receive, send):
    await PlainTextResponse("ok")(scope, receive, send)


@pytest.mark.parametrize("presented", [KEYS[0], KEYS[2], "wrong", KEYS[0] + KEYS[1], "k"])
async def test_every_key_is_compared_in_constant_time_with_no_early_exit(monkeypatch, presented):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    middleware = ApiKeyMiddleware(_ok, keys=KEYS)
    status = await _ask(middleware, f"Bearer {presented}")

    assert status == (200 if presented in KEYS else 401)
    # One constant-time comparison of SHA-256 digests against every configured key, whether
    # or not one matched (digests: equal lengths, so not even the key's length shows).
    digest = hashlib.sha256
    assert sorted(key for _, key in compared) == sorted(digest(k.encode()).digest() for k in KEYS)
    assert all(candidate == digest(presented.encode()).digest() for candidate, _ in compared)


# --- limits ------------------------------------------------------------------

LIMITS = {"max_body_bytes": 64 * 1024, "max_image_bytes": 40 * 1024, "body_read_timeout": 1.0}


@pytest.fixture
def limited_proxy(make_proxy):
    return make_proxy(**LIMITS)


def test_an_oversized_content_length_is_refused_before_the_body_is_sent(limited_proxy, emulator):
    sock = connect(limited_proxy.url)
    with sock:
        headers = {
            **limited_proxy.auth,
            "Content-Type": "application/json",
            "Content-Length": str(LIMITS["max_body_bytes"] + 1),
        }
        started = time.monotonic()
        sock.sendall(request_head("POST", GENERATIONS, headers))  # and not one byte of body
        status, _, body = read_response(sock, timeout=5)
    assert status == 413
    assert time.monotonic() - started < 2
    assert assert_openai_error(413, json.loads(body))["code"] == "request_too_large"
    assert emulator_calls(emulator) == []


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b"])
def test_a_chunked_body_is_cut_off_at_the_limit(limited_proxy, emulator, content_type):
    sock = connect(limited_proxy.url)
    with sock:
        headers = {
            **limited_proxy.auth,
            "Content-Type": content_type,
            "Transfer-Encoding": "chunked",
        }
        sock.sendall(request_head("POST", GENERATIONS, headers))
        start = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        if content_type.startswith("application/json"):
            start = b'{"prompt": "'
        sock.sendall(f"{len(start):x}\r\n".encode() + start + b"\r\n")
        chunk = b"x" * 8192
        sent = len(start)
        while sent <= LIMITS["max_body_bytes"]:  # just over the limit, then no more
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        status, _, body = read_response(sock, timeout=5)
    assert status == 413
    assert_openai_error(413, json.loads(body))
    assert emulator_calls(emulator) == []


def test_five_reference_images_are_refused(limited_proxy, emulator):
    image = _png(32, 32)
    files = [("image[]", (f"{i}.png", image, "image/png")) for i in range(5)]
    response = HTTP.post(
        limited_proxy.url + EDITS,
        headers=limited_proxy.auth,
        data={"prompt": "five is one too many", **SMALL},
        files=files,
    )
    assert response.status_code == 400, response.text
    assert assert_openai_error(400, response.json())["param"] == "image"

    response = HTTP.post(
        limited_proxy.url + EDITS,
        headers=limited_proxy.auth,
        json={"prompt": "five", "images": [_data_url(image)] * 5, **SMALL},
    )
    assert response.status_code == 400, response.text
    assert emulator_calls(emulator) == []


def test_an_image_over_max_image_bytes_is_413(limited_proxy, emulator):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMITS["max_image_bytes"] + 1)
    response = HTTP.post(
        limited_proxy.url + EDITS,
        headers=limited_proxy.auth,
        data={"prompt": "too big", **SMALL},
        files=[("image", ("big.png", big, "image/png"))],
    )
    assert response.status_code == 413, response.text
    assert assert_openai_error(413, response.json())["param"] == "image"

    response = HTTP.post(
        limited_proxy.url + EDITS,
        headers=limited_proxy.auth,
        json={"prompt": "too big", "images": [_data_url(big)], **SMALL},
    )
    assert response.status_code == 413, response.text
    assert emulator_calls(emulator) == []


def _png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes that claim a huge RGB image: a decompression bomb's header."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(picture(16, 16, "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: FFC0, length, precision, H, W
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    "bomb",
    [_png_claiming(30000, 30000), _png_claiming(8000, 6000), _jpeg_claiming(60000, 60000)],
    ids=["png 30000x30000", "png 8000x6000", "jpeg 60000x60000"],
)
def test_decompression_bombs_are_refused_without_decoding_them(limited_proxy, emulator, bomb):
    assert len(bomb) < LIMITS["max_image_bytes"]
    for send in ("file", "data url"):
        started = time.monotonic()
        if send == "file":
            response = HTTP.post(
                limited_proxy.url + EDITS,
                headers=limited_proxy.auth,
                data={"prompt": "bomb", **SMALL},
                files=[("image", ("bomb.png", bomb, "image/png"))],
            )
        else:
            response = HTTP.post(
                limited_proxy.url + EDITS,
                headers=limited_proxy.auth,
                json={"prompt": "bomb", "images": [_data_url(bomb)], **SMALL},
            )
        assert response.status_code == 400, response.text
        param = "image" if send == "file" else "images"
        assert assert_openai_error(400, response.json())["param"] == param
        assert time.monotonic() - started < 2  # refused from the header, not after decoding
    assert emulator_calls(emulator) == []


def test_absurd_prompt_lengths_are_400(make_proxy, emulator):
    proxy = make_proxy()
    huge = "a" * 2_000_000
    response = HTTP.post(
        proxy.url + GENERATIONS, headers=proxy.auth, json={"prompt": huge, **SMALL}
    )
    assert response.status_code == 400, response.text[:300]
    assert assert_openai_error(400, response.json())["param"] == "prompt"
    assert huge[:1000] not in response.text  # the answer does not echo the prompt back

    response = HTTP.post(
        proxy.url + EDITS,
        headers=proxy.auth,
        data={"prompt": huge, **SMALL},
        files=[("image", ("a.png", _png(), "image/png"))],
    )
    assert response.status_code == 400, response.text[:300]
    assert_openai_error(400, response.json())
    assert emulator_calls(emulator) == []


def test_a_client_trickling_its_body_is_cut_off_with_408(limited_proxy, emulator):
    sock = connect(limited_proxy.url)
    with sock:
        headers = {
            **limited_proxy.auth,
            "Content-Type": "application/json",
            "Content-Length": "500",
        }
        sock.sendall(request_head("POST", GENERATIONS, headers))
        started = time.monotonic()
        answered = False
        while time.monotonic() - started < 10 and not answered:
            sock.sendall(b" ")  # one byte every 0.1 s: 50 s for the whole body
            answered = bool(select.select([sock], [], [], 0.1)[0])
        elapsed = time.monotonic() - started
        # Meanwhile and after, everyone else is served.
        assert HTTP.get(limited_proxy.url + "/health/live").status_code == 200
        status, _, body = read_response(sock, timeout=5)
        assert sock.recv(1) == b""  # and the connection is closed
    assert answered and elapsed < LIMITS["body_read_timeout"] + 2, elapsed
    assert status == 408
    assert assert_openai_error(408, json.loads(body))["code"] == "request_timeout"
    assert emulator_calls(emulator) == []


# --- CORS ------------------------------------------------------------------

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"


def _preflight(proxy, origin: str):
    return HTTP.options(
        proxy.url + GENERATIONS,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_is_off_by_default_for_every_origin(make_proxy):
    proxy = make_proxy()
    for origin in (ALLOWED, OTHER, "null", "http://127.0.0.1"):
        responses = [
            _preflight(proxy, origin),
            HTTP.get(proxy.url + "/health", headers={"Origin": origin}),
            HTTP.get(proxy.url + "/v1/models", headers={"Origin": origin, **proxy.auth}),
            HTTP.post(
                proxy.url + GENERATIONS,
                headers={"Origin": origin, **proxy.auth},
                json={"prompt": "cors", **SMALL},
            ),
        ]
        for response in responses:
            assert not any(h.startswith("access-control-") for h in response.headers), (
                origin,
                response.headers,
            )


def test_cors_origins_allows_exactly_the_configured_origin(make_proxy):
    proxy = make_proxy(cors_origins=[ALLOWED])
    preflight = _preflight(proxy, ALLOWED)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

    actual = HTTP.post(
        proxy.url + GENERATIONS,
        headers={"Origin": ALLOWED, **proxy.auth},
        json={"prompt": "cors", **SMALL},
    )
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in actual.headers["access-control-expose-headers"].lower()

    for origin in (OTHER, "null", ALLOWED + ".evil.net", "http://app.example.com"):
        refused = _preflight(proxy, origin)
        assert refused.status_code >= 400
        assert "access-control-allow-origin" not in refused.headers
        simple = HTTP.get(proxy.url + "/v1/models", headers={"Origin": origin, **proxy.auth})
        assert "access-control-allow-origin" not in simple.headers


# --- SSRF ------------------------------------------------------------------


@pytest.fixture
def listener():
    """A socket we own: any connection to it is the proxy fetching a caller's URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/reference.png",
        f"https://127.0.0.1:{port}/reference.png",
        f"HTTP://127.0.0.1:{port}/upper.png",
        f"//127.0.0.1:{port}/scheme-relative.png",
        f"ftp://127.0.0.1:{port}/reference.png",
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{port}/_",
        f" http://127.0.0.1:{port}/leading-space.png",
    ]


def test_only_data_urls_are_accepted_and_no_url_is_ever_fetched(make_proxy, emulator, listener):
    proxy = make_proxy()
    port = listener.getsockname()[1]
    for url in _urls(port):
        shapes = [url, {"image_url": url}, {"image_url": {"url": url}}, {"url": url}]
        for shape in shapes:
            for path in (GENERATIONS, EDITS):
                response = HTTP.post(
                    proxy.url + path,
                    headers=proxy.auth,
                    json={"prompt": "fetch this", "images": [shape], **SMALL},
                )
                assert response.status_code == 400, (url, shape, response.text)
                error = assert_openai_error(400, response.json())
                assert error["param"] == "images", error
        form = HTTP.post(
            proxy.url + EDITS,
            headers=proxy.auth,
            data={"prompt": "fetch this", "image": url, **SMALL},
        )
        assert form.status_code == 400, (url, form.text)
        assert_openai_error(400, form.json())
    assert _connections(listener) == 0
    assert emulator_calls(emulator) == []


def test_url_text_in_seed_image_fields_is_refused_never_fetched(make_proxy, emulator, listener):
    proxy = make_proxy()
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    as_form = HTTP.post(
        proxy.url + GENERATIONS,
        headers=proxy.auth,
        data={"prompt": "seed style", "input_image_0": url, **SMALL},
    )
    as_json = HTTP.post(
        proxy.url + GENERATIONS,
        headers=proxy.auth,
        json={"prompt": "seed style", "input_image_1": url, **SMALL},
    )
    for response, param in ((as_form, "input_image_0"), (as_json, "input_image_1")):
        assert response.status_code == 400, response.text  # refused, not silently dropped
        error = assert_openai_error(400, response.json())
        assert (error["param"], error["code"]) == (param, "unsupported_url")
    assert _connections(listener) == 0
    assert emulator_calls(emulator) == []

    # A data: URL under the seed's name is a reference like any other.
    response = HTTP.post(
        proxy.url + GENERATIONS,
        headers=proxy.auth,
        data={"prompt": "seed style", "input_image_0": _data_url(_png()), **SMALL},
    )
    assert response.status_code == 200, response.text
    assert list(emulator_calls(emulator)[0]["files"]) == ["input_image_0"]


# --- no secret anywhere ------------------------------------------------------------------

BAD_ID = "4d0badc0ffee" + "9" * 20  # a fourth account the emulator does not know
BAD_TOKEN = "tok-BAD-SECRET-4-" + "q" * 24


def _full_run(proxy, emulator) -> list[str]:
    """Everything a caller can see from a run that touches every route and every kind of
    failure: the bodies and headers to search."""
    seen: list[str] = []
    client = httpx.Client(base_url=proxy.url, timeout=30)
    keyed = {"Authorization": f"Bearer {API_KEY}"}

    def record(response: httpx.Response) -> httpx.Response:
        seen.append(str(response.status_code) + repr(list(response.headers.items())))
        seen.append(response.content.decode("utf-8", errors="replace"))
        return response

    def gen(**body):
        return record(client.post("/v1/images/generations", headers=keyed, json={**SMALL, **body}))

    # 1 out of neurons, 2 token rejected, 3 failing once, 4 a token Cloudflare never issued.
    emulator.fault(account=account_id(1), status=429, code=3036, count=1)
    emulator.fault(account=account_id(2), status=401, count=1)
    emulator.fault(account=account_id(3), status=500, count=1)
    assert gen(prompt="everything fails").status_code == 502
    assert gen(prompt="account 3 again").status_code == 200
    url = gen(prompt="as a url", response_format="url").json()["data"][0]["url"]
    assert record(client.get(url)).status_code == 200
    record(client.post("/v1/images/generations", headers=keyed, json={**SMALL, "stream": True}))
    edit = client.post(
        "/v1/images/edits",
        headers=keyed,
        data={"prompt": "edit", **SMALL},
        files=[("image", ("a.png", _png(), "image/png"))],
    )
    assert record(edit).status_code == 200
    emulator.fault(account=account_id(3), status=400, count=1)
    assert gen(prompt="upstream refuses the input").status_code == 400
    emulator.fault(account=account_id(3), status=429, code=3040, count=1)
    assert gen(prompt="all cooling or parked").status_code == 429
    record(client.post("/v1/images/generations", headers=keyed, content=b"{not json"))
    record(client.post("/v1/images/generations", json=SMALL))
    record(client.post("/v1/images/generations", headers={"Authorization": "Bearer nope"}))
    record(client.post("/v1/images/generations", headers=keyed, json={"prompt": "x", "model": "?"}))
    record(client.get("/v1/nothing-here", headers=keyed))
    record(client.delete("/v1/models", headers=keyed))
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/", "/openapi.json"):
        record(client.get(path))
    for path in ("/v1/models", "/v1/models/flux-2-dev"):
        record(client.get(path, headers=keyed))
    for static in sorted(STATIC_DIR.iterdir()):
        record(client.get(f"/static/{static.name}"))
    client.close()
    return seen


USER_KEY = "fpx-user-SECRET-" + "u" * 24
PLAIN_KEY = "fpx-plain-SECRET-" + "p" * 23
_KEYS_TOML = f"""
[[keys]]
name = "someone"
key_sha256 = "{hashlib.sha256(USER_KEY.encode()).hexdigest()}"
role = "user"
daily_images = 1
models = ["{SMALL["model"]}"]

[[keys]]
name = "written-in-clear"
key = "{PLAIN_KEY}"
role = "admin"
"""


def _user_key_run(proxy) -> list[str]:
    """A named user key's view: served, over quota, a model it may not use, its usage."""
    seen: list[str] = []
    client = httpx.Client(base_url=proxy.url, timeout=30)
    user = {"Authorization": f"Bearer {USER_KEY}"}
    calls = [
        ("POST", "/v1/images/generations", {"prompt": "mine", **SMALL}),
        ("POST", "/v1/images/generations", {"prompt": "one too many", **SMALL}),
        ("POST", "/v1/images/generations", {"prompt": "x", "model": "flux-2-dev"}),
        ("GET", "/v1/usage", None),
        ("GET", "/v1/usage/quota", None),
        ("GET", "/health", None),
    ]
    for method, path, body in calls:
        response = client.request(method, path, headers=user, json=body)
        seen.append(str(response.status_code) + repr(list(response.headers.items())))
        seen.append(response.text)
    plain = client.get("/health", headers={"Authorization": f"Bearer {PLAIN_KEY}"})
    seen.append(plain.text)
    client.close()
    return seen


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_token_key_or_account_id_in_any_response_log_line_or_check_output(tmp_path, log_format):
    emulator = shared_emulator()
    env = {
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": "DEBUG",
        "STATE_BACKEND": "sqlite",
        "DATA_DIR": tmp_path / "data",
        "ACCOUNT_4": BAD_ID,
        "CF_API_TOKEN_4": BAD_TOKEN,
    }
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(_KEYS_TOML)
    env["API_KEYS_FILE"] = keys_file
    proxy = start_proxy(tmp_path / "proxy", emulator, **env)
    try:
        seen = _user_key_run(proxy)  # first, while every account can still serve
        seen += _full_run(proxy, emulator)
    finally:
        proxy.proc.stop()  # SIGTERM: the shutdown lines are searched too
    seen.append(proxy.proc.output())
    check = run_check(tmp_path / "check", proxy.env)
    seen += [check.stdout, check.stderr]

    secrets = [API_KEY, BAD_TOKEN, BAD_ID, USER_KEY, PLAIN_KEY]
    secrets += [hashlib.sha256(USER_KEY.encode()).hexdigest()]
    secrets += [token for _, _, token in ACCOUNTS] + [account for _, account, _ in ACCOUNTS]
    everything = "\n".join(seen)
    assert "key_quota_exceeded" in everything and "model_not_allowed" in everything
    assert "upstream_attempt" in everything  # the logs really were captured
    assert any(call["account"] == BAD_ID for call in emulator.calls())  # and 4 was tried
    for secret in secrets:
        assert secret not in everything, f"a secret leaked ({secret[:6]}…)"
