"""Every row of the Workers AI error table (workers-ai.md) maps to one OutcomeKind."""

from __future__ import annotations

import aiohttp
import pytest

from flux_proxy.upstream.classify import (
    MAX_UPSTREAM_MESSAGE,
    OutcomeKind,
    classify,
    classify_exception,
    parse_neurons,
    parse_retry_after,
)

K = OutcomeKind


def envelope(code: int | None, message: str = "something went wrong") -> dict:
    error = {"message": message} if code is None else {"code": code, "message": message}
    return {"success": False, "errors": [error], "messages": [], "result": None}


ROWS = [
    # (status, code, message, expected)
    (429, 3036, "you have used up your daily free allocation of 10,000 neurons", K.QUOTA_EXHAUSTED),
    (429, 4006, "you have used up your daily free allocation of 10,000 neurons", K.QUOTA_EXHAUSTED),
    (429, 3036, "quota", K.QUOTA_EXHAUSTED),
    (429, None, "You have used up your daily free allocation", K.QUOTA_EXHAUSTED),
    (500, 9999, "daily free allocation of 10,000 neurons exhausted", K.QUOTA_EXHAUSTED),
    (400, None, "Not enough neurons left", K.QUOTA_EXHAUSTED),
    (429, 3040, "Capacity temporarily exceeded, please try again.", K.CAPACITY),
    (429, None, "Too many requests", K.RATE_LIMITED),
    (429, 971, "Please wait and consider throttling your request speed", K.RATE_LIMITED),
    (401, 10000, "Authentication error", K.AUTH),
    (403, 10000, "Authentication error", K.AUTH),
    (401, 9109, "Invalid access token", K.AUTH),
    (403, 9109, "Invalid access token", K.AUTH),
    (403, 3023, "Account blocked", K.AUTH),
    (401, None, "Unauthorized", K.AUTH),
    (403, 5035, "This model requires the Workers Paid plan", K.MODEL_UNAVAILABLE),
    (400, 5007, "No such model @cf/nope", K.MODEL_UNAVAILABLE),
    (404, 3042, "Model not found", K.MODEL_UNAVAILABLE),
    (403, 5018, "The account is not allowed to access this model", K.MODEL_UNAVAILABLE),
    (403, 3041, "The account is not allowed to access this model", K.MODEL_UNAVAILABLE),
    (403, 5016, "User has not agreed to Llama3.2 model terms", K.MODEL_UNAVAILABLE),
    (400, 3039, "Finetune is missing required files", K.INPUT_ERROR),
    (405, 5019, "Request trying to use deprecated SDK version", K.CONFIG_ERROR),
    (405, 5005, "The model does not support LoRa inference", K.CONFIG_ERROR),
    (405, None, "Method not allowed", K.CONFIG_ERROR),
    (400, 5006, "AiError: Bad input: must have required property 'prompt'", K.INPUT_ERROR),
    (400, 3030, "Your output has been flagged", K.INPUT_ERROR),
    (400, 3030, "Invalid input image[0]: unable to decode image file", K.INPUT_ERROR),
    (400, 5004, "Invalid base64", K.INPUT_ERROR),
    (400, 3003, "Incomplete request", K.INPUT_ERROR),
    (400, None, "Bad request", K.INPUT_ERROR),
    (413, 3006, "Request is too large", K.TOO_LARGE),
    (413, None, "Payload too large", K.TOO_LARGE),
    (400, 3006, "Request is too large", K.TOO_LARGE),
    (408, 3007, "Request timeout", K.TRANSIENT),
    (408, 3008, "Request aborted", K.TRANSIENT),
    (500, None, "Internal server error", K.TRANSIENT),
    (502, 1000, "Bad gateway", K.TRANSIENT),
    (503, None, "Service unavailable", K.TRANSIENT),
    (504, 3043, "Gateway timeout", K.TRANSIENT),
]


@pytest.mark.parametrize(("status", "code", "message", "expected"), ROWS)
def test_error_table_row_maps_to_its_outcome(status, code, message, expected):
    attempt = classify(status, {}, envelope(code, message))
    assert attempt.kind is expected
    assert attempt.status == status
    assert attempt.code == code
    assert attempt.image is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, None),  # not JSON at all
        (502, "<html>bad gateway</html>"),
        (200, {"result": {}, "success": True}),  # the seed's `{"result":{}}` fault
        (200, {"success": True, "result": {"image": ""}}),
        (200, [1, 2, 3]),
        (200, {"success": False, "errors": []}),
        (418, {"weird": True}),
    ],
)
def test_garbage_and_answers_without_image_are_transient(status, body):
    assert classify(status, {}, body).kind is OutcomeKind.TRANSIENT


def test_answer_without_image_says_so():
    attempt = classify(200, {}, {"result": {}, "success": True})
    assert attempt.message == "Workers AI answered without an image"


def test_terms_not_accepted_says_what_to_do_and_quotes_cloudflare():
    attempt = classify(403, {}, envelope(5016, "User has not agreed to Leonardo model terms"))
    assert "not accepted this model's terms" in attempt.message
    assert "User has not agreed to Leonardo model terms" in attempt.message


def test_input_error_message_quotes_cloudflare_trimmed():
    long = "AiError: Bad input: " + "x" * 2000
    attempt = classify(400, {}, envelope(5006, long))
    assert attempt.message.startswith("Workers AI rejected the input (code 5006): AiError: Bad")
    assert len(attempt.message) < MAX_UPSTREAM_MESSAGE + 60
    assert "x" * 400 not in attempt.message


def test_message_is_one_line_and_never_the_raw_body():
    body = envelope(5006, "line one\nline two\r\n\tend")
    body["result"] = {"secret_thing": "should-not-appear"}
    attempt = classify(400, {}, body)
    assert "\n" not in attempt.message and "\r" not in attempt.message
    assert "should-not-appear" not in attempt.message
    assert "line one line two end" in attempt.message


def test_non_input_errors_do_not_echo_upstream_text():
    # An auth failure's upstream text is no use to a caller; the kind says enough.
    attempt = classify(401, {}, envelope(10000, "Authentication error for token abc123"))
    assert "abc123" not in attempt.message
    assert "10000" in attempt.message


def test_input_image_error_names_the_image_param():
    attempt = classify(400, {}, envelope(3030, "Invalid input image[0]: unable to decode"))
    assert attempt.param == "image"
    assert classify(400, {}, envelope(5006, "Bad input: prompt")).param is None


def test_code_given_as_string_is_understood():
    body = {"success": False, "errors": [{"code": "3036", "message": "x"}]}
    assert classify(429, {}, body).kind is OutcomeKind.QUOTA_EXHAUSTED


def test_retry_after_and_neurons_are_carried():
    attempt = classify(429, {"Retry-After": "17"}, envelope(None, "slow down"), neurons=3.5)
    assert attempt.retry_after == 17.0
    assert attempt.neurons == 3.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(value, expected):
    now = 1445412420.0  # 2015-10-21T07:27:00Z
    assert parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("172.80", 172.8), (" 5 ", 5.0), ("abc", None), (None, None), ("-1", None), ("inf", None)],
)
def test_neurons_header_parsing(value, expected):
    assert parse_neurons(value) == expected


@pytest.mark.parametrize(
    ("exc", "maybe_billed"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), False),
        (aiohttp.ClientConnectorError.__new__(aiohttp.ClientConnectorError), False),
        (aiohttp.SocketTimeoutError("read"), True),
        (TimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError("reset by peer"), True),
        (aiohttp.ClientPayloadError("truncated"), True),
    ],
)
def test_exceptions_are_transient_and_say_whether_they_may_be_billed(exc, maybe_billed):
    attempt = classify_exception(exc, latency=1.5)
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.status is None
    assert attempt.maybe_billed is maybe_billed
    assert attempt.latency == 1.5
    assert attempt.message
