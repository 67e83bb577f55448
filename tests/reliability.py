"""Helpers shared by the reliability and security tests: the OpenAI error shape, raw HTTP over
a socket (for what no client library will send: lying Content-Length, trickled bodies,
abandoned requests), and a look inside an in-thread proxy's event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

SMALL = {"model": "flux-2-klein-4b", "size": "256x256"}

# One keep-alive client for the tests' own calls: `httpx.post(...)` builds a client (and an SSL
# context) per call, some 40 ms each, which adds up over a table of cases.
HTTP = httpx.Client(timeout=30)


def add_fault(emulator: Any, **rule: Any) -> None:
    rule.setdefault("kind", "error")
    HTTP.post(f"{emulator.root}/__emulator/faults", json=rule).raise_for_status()


def emulator_calls(emulator: Any) -> list[dict]:
    response = HTTP.get(f"{emulator.root}/__emulator/calls")
    response.raise_for_status()
    return response.json()["calls"]


def reset_emulator(emulator: Any) -> None:
    HTTP.post(f"{emulator.root}/__emulator/reset", json={}).raise_for_status()


def generate(proxy: Any, timeout: float = 30, **body: Any) -> httpx.Response:
    body = {"prompt": "a lighthouse in a storm", **SMALL, **body}
    return HTTP.post(
        proxy.base_url + "/images/generations", json=body, headers=proxy.auth, timeout=timeout
    )


def assert_openai_error(status: int, body: Any, headers: Any = None) -> dict:
    """`{"error": {"message", "type", "param", "code"}}` with sane types; returns the inner dict."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    assert "Traceback" not in error["message"], error
    if headers is not None:
        assert headers.get("content-type", "").startswith("application/json"), headers
    return error


def check_response(response: Any) -> None:
    """Any httpx response: never a 500, and every error OpenAI-shaped."""
    assert response.status_code != 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response.status_code, response.json(), response.headers)


# --- raw HTTP ------------------------------------------------------------------


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port.split("/")[0])


def request_head(
    method: str, path: str, headers: dict[str, str], *, host: str = "127.0.0.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(host_port(url), timeout=timeout)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response (Content-Length framed) or until the server closes."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        body += chunk
    return status, headers, body


def raw_call(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these header bytes (clients refuse e.g. trailing spaces)."""
    headers = {**headers, "Content-Length": str(len(body)), "Connection": "close"}
    with connect(url) as sock:
        sock.sendall(request_head(method, path, headers) + body)
        return read_response(sock)


# --- inside an in-thread proxy (tests/conftest.py's make_proxy) --------------------------


def proxy_loop(handle: Any) -> asyncio.AbstractEventLoop:
    """The event loop uvicorn runs the proxy in (its listening server knows it)."""
    return handle.server.servers[0].get_loop()


def in_proxy_loop(handle: Any, coro: Any, timeout: float = 10.0) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, proxy_loop(handle)).result(timeout)


async def _other_tasks() -> list[str]:
    me = asyncio.current_task()
    return sorted(
        getattr(task.get_coro(), "__qualname__", repr(task))
        for task in asyncio.all_tasks()
        if task is not me
    )


def proxy_tasks(handle: Any) -> list[str]:
    """The tasks alive in the proxy's loop (names of their coroutines), ours excluded."""
    return in_proxy_loop(handle, _other_tasks())


def open_sockets() -> int:
    """Socket file descriptors of this process (proxy, emulator and client all live here)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
