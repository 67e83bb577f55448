"""`POST /v1/files` as uploads of up to 200 MB need it: the file part streams to disk under
DATA_DIR instead of being held in memory, and nothing is left behind when an upload is
refused. Real uvicorn proxy, the unchanged openai SDK."""

from __future__ import annotations

import hashlib
import json
import socket
import tracemalloc

import httpx
import openai
import pytest


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def sdk(make_proxy, data_dir):
    proxy = make_proxy(data_dir=data_dir, files_max_bytes=64 * 1024 * 1024)
    with openai.OpenAI(
        base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=120
    ) as client:
        yield client


def spool_leftovers(data_dir) -> list[str]:
    blobs = data_dir / "files"
    if not blobs.is_dir():
        return []
    return sorted(p.name for p in blobs.iterdir() if p.name.startswith("."))


def test_a_big_upload_is_streamed_to_disk_not_held_in_memory(sdk, data_dir, tmp_path):
    line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/images/generations"})
    source = tmp_path / "big.jsonl"
    source.write_text((line + "\n") * (24 * 1024 * 1024 // (len(line) + 1)), encoding="utf-8")
    size = source.stat().st_size

    # The server runs in this process: everything it allocates while receiving is traced. The
    # SDK streams the open file, so the client side holds no copy either.
    tracemalloc.start()
    try:
        with source.open("rb") as handle:
            uploaded = sdk.files.create(file=("big.jsonl", handle), purpose="batch")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert uploaded.bytes == size
    assert peak < size / 4, f"receiving {size} bytes peaked at {peak} bytes of memory"
    assert sdk.files.content(uploaded.id).content == source.read_bytes()
    assert spool_leftovers(data_dir) == []


def test_refused_uploads_leave_no_temporary_file(make_proxy, data_dir):
    proxy = make_proxy(data_dir=data_dir, files_max_bytes=1000)
    with openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as over:
            client.files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
        assert over.value.status_code == 413 and over.value.body["param"] == "file"
        with pytest.raises(openai.BadRequestError) as not_utf8:
            client.files.create(file=("bad.jsonl", b"\xff\xfe{}"), purpose="batch")
        assert not_utf8.value.body["param"] == "file"
        with pytest.raises(openai.BadRequestError) as purpose:
            client.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
        assert purpose.value.body["param"] == "purpose"
        with pytest.raises(openai.BadRequestError) as empty:
            client.files.create(file=("a.jsonl", b""), purpose="batch")
        assert "empty" in empty.value.body["message"]
        kept = client.files.create(file=("ok.jsonl", b"{}\n"), purpose="batch")
        assert client.files.content(kept.id).content == b"{}\n"
    # A form without its file, or with two, and a body that is not a form at all.
    auth = {"authorization": f"Bearer {proxy.key}"}
    url = proxy.base_url + "/files"
    no_file = httpx.post(url, headers=auth, data={"purpose": "batch"}, timeout=10)
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    two = httpx.post(
        url,
        headers=auth,
        data={"purpose": "batch"},
        files=[("file", ("a.jsonl", b"{}")), ("file", ("b.jsonl", b"{}"))],
        timeout=10,
    )
    assert two.status_code == 400 and two.json()["error"]["param"] == "file"
    as_json = httpx.post(url, headers=auth, json={"purpose": "batch"}, timeout=10)
    assert as_json.status_code == 400 and as_json.json()["error"]["param"] == "file"
    assert spool_leftovers(data_dir) == []


def test_an_upload_declared_over_the_limit_is_refused_before_its_body(make_proxy, data_dir):
    proxy = make_proxy(data_dir=data_dir, files_max_bytes=1000)
    host, port = proxy.url.removeprefix("http://").split(":")
    head = (
        "POST /v1/files HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: Bearer {proxy.key}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {1000 + 100 * 1024}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode())  # and not one byte of the body
        answer = conn.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer


def test_a_big_file_is_streamed_back_not_read_into_memory(sdk, tmp_path):
    line = json.dumps({"custom_id": "y", "method": "POST", "url": "/v1/images/generations"})
    source = tmp_path / "big.jsonl"
    source.write_text((line + "\n") * (24 * 1024 * 1024 // (len(line) + 1)), encoding="utf-8")
    with source.open("rb") as handle:
        uploaded = sdk.files.create(file=("big.jsonl", handle), purpose="batch")
    digest, size = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        # The SDK's streaming form, so the client holds one chunk at a time too.
        with sdk.files.with_streaming_response.content(uploaded.id) as response:
            assert response.headers["content-length"] == str(uploaded.bytes)
            for chunk in response.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == uploaded.bytes
    assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    assert peak < size / 4, f"sending {size} bytes peaked at {peak} bytes of memory"


def test_a_form_cut_short_before_its_closing_boundary_is_refused_not_kept(sdk, data_dir):
    whole = b'{"custom_id": "a"}\n' * 100
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n" + whole[:1000]  # and no "\r\n--b--"
    )
    cut = httpx.post(
        str(sdk.base_url) + "files",
        headers={
            "authorization": f"Bearer {sdk.api_key}",
            "content-type": "multipart/form-data; boundary=b",
        },
        content=body,
        timeout=10,
    )
    assert cut.status_code == 400, cut.text
    assert cut.json()["error"]["code"] == "invalid_multipart"
    # Other broken forms: an OpenAI error each, never a 500.
    for content_type, broken in (
        ("multipart/form-data", b"--b\r\n\r\n"),  # no boundary in the header
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx"),
        ("multipart/form-data; boundary=b", b"\x00garbage\r\n--b--junk"),
    ):
        answer = httpx.post(
            str(sdk.base_url) + "files",
            headers={"authorization": f"Bearer {sdk.api_key}", "content-type": content_type},
            content=broken,
            timeout=10,
        )
        assert answer.status_code == 400, (broken, answer.text)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert list(sdk.files.list()) == []
    assert spool_leftovers(data_dir) == []


def test_a_file_named_in_any_script_is_read_back(sdk):
    # httpx (the SDK's transport) sends the name as UTF-8; a Content-Disposition header can
    # carry only Latin-1, so a name such as 图片.jsonl needs RFC 6266's filename*.
    body = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/images/generations"})
    uploaded = sdk.files.create(file=("图片 été.jsonl", body.encode()), purpose="batch")
    assert sdk.files.retrieve(uploaded.id).filename == "图片 été.jsonl"
    read = sdk.files.with_raw_response.content(uploaded.id)
    assert read.http_response.status_code == 200
    assert read.http_response.content == body.encode()
    disposition = read.headers["content-disposition"]
    assert disposition.isascii()
    assert "filename*=UTF-8''%E5%9B%BE%E7%89%87%20%C3%A9t%C3%A9.jsonl" in disposition
