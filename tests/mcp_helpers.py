"""Helpers for the MCP tests: the MCP SDK's own client over stdio (`flux-proxy mcp` as a real
subprocess) and over streamable HTTP (a real uvicorn server), and readers for tool results.
"""

from __future__ import annotations

import base64
import contextlib
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from PIL import Image
from procs import account_env, clean_env


def stdio_env(emulator_base_url: str | None, workdir: Path, **values: object) -> dict[str, str]:
    """The environment of a `flux-proxy mcp` child: the demo accounts on `emulator_base_url`
    (None: `--emulator` brings its own), JSON logs, short timeouts, state under `workdir`."""
    env: dict[str, object] = {
        "LOG_FORMAT": "json",
        "UPSTREAM_READ_TIMEOUT": 10,
        "REQUEST_DEADLINE": 30,
        "DATA_DIR": workdir / "state",
    }
    if emulator_base_url is not None:
        env["CF_API_BASE_URL"] = emulator_base_url
        env.update(account_env())
    env.update(values)
    return clean_env(**env)


@contextlib.asynccontextmanager
async def stdio_mcp(
    workdir: Path,
    env: dict[str, str],
    *,
    emulator_flag: bool = False,
    mode: str = "auto",
) -> AsyncIterator[Client]:
    """`python -m flux_proxy mcp` started by the SDK's stdio client; its stderr goes to
    `workdir/stderr.log`."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test's temp dir, instant
    args = ["-m", "flux_proxy", "mcp", *(["--emulator"] if emulator_flag else [])]
    params = StdioServerParameters(command=sys.executable, args=args, env=env, cwd=workdir)
    with open(workdir / "stderr.log", "w") as errlog:  # noqa: ASYNC230 - opened once, not read
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            yield client


@contextlib.asynccontextmanager
async def http_mcp(url: str, key: str | None, *, mode: str = "auto") -> AsyncIterator[Client]:
    """The SDK's streamable-HTTP client on `url`, sending `key` as a Bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def images_of(result: CallToolResult) -> list[Image.Image]:
    """Every image content of a result, decoded (so a broken one fails the test)."""
    decoded = []
    for part in result.content:
        if part.type == "image":
            image = Image.open(io.BytesIO(base64.b64decode(part.data)))
            image.load()
            decoded.append(image)
    return decoded


def text_of(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if part.type == "text")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
