"""The README's MCP configuration, as written, starts a working server: the Claude Desktop /
Cursor stdio entry (its command, args and env, started the way hosts start it, by the MCP SDK's
stdio client with only the entry's env on top of the SDK's default environment, in a working
directory the host chose) and the Cursor entry for streamable HTTP (its URL path and headers).

The entries are read out of README.md, so a renamed setting, argument or path there fails here.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import images_of, text_of
from procs import ACCOUNTS, shared_emulator

README = Path(__file__).resolve().parent.parent / "README.md"
SMALL = {"prompt": "a lighthouse", "model": "flux-2-klein-4b", "size": "256x256"}


def readme_entries() -> list[dict]:
    """Every `mcpServers` JSON block of the README, parsed."""
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    return [json.loads(block)["mcpServers"] for block in blocks if '"mcpServers"' in block]


def stdio_entry() -> dict:
    (entry,) = [e["flux-proxy"] for e in readme_entries() if "command" in e["flux-proxy"]]
    return entry


def http_entry() -> dict:
    (entry,) = [e["flux-proxy"] for e in readme_entries() if "url" in e["flux-proxy"]]
    return entry


def installed_command(command: str) -> str:
    """The README's absolute path stands for this checkout's installed script."""
    assert Path(command).is_absolute(), "hosts choose the working directory: keep it absolute"
    script = Path(sys.executable).parent / Path(command).name
    assert script.exists(), f"{script} is not installed (pip install -e .)"
    return str(script)


async def call_over_stdio(params: StdioServerParameters, errlog: Path, *, batch: bool = False):
    with open(errlog, "w") as err:  # noqa: ASYNC230 - opened once, not read
        async with Client(stdio_client(params, errlog=err)) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("generate_image", SMALL)
            if batch:
                prompts = {"prompts": ["a", "b"], "model": SMALL["model"], "size": SMALL["size"]}
                submitted = await client.call_tool("submit_batch", prompts)
                assert not submitted.is_error, text_of(submitted)
    return tools, result


async def test_the_readme_stdio_entry_with_real_accounts_makes_an_image(tmp_path):
    entry = stdio_entry()
    emulator = shared_emulator()
    env = dict(entry["env"])
    # The entry's placeholders, filled with the emulator's first account; only where
    # Cloudflare is differs from a real set-up.
    assert set(env) == {"ACCOUNT_1", "CF_API_TOKEN_1", "DATA_DIR"}
    _, account_id, token = ACCOUNTS[0]
    env.update(ACCOUNT_1=account_id, CF_API_TOKEN_1=token, DATA_DIR=str(tmp_path / "state"))
    env["CF_API_BASE_URL"] = emulator.base_url
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    params = StdioServerParameters(
        command=installed_command(entry["command"]), args=entry["args"], env=env, cwd=host_dir
    )
    tools, result = await call_over_stdio(params, tmp_path / "stderr.log")
    assert {"generate_image", "edit_image", "account_status"} <= tools
    assert not result.is_error, text_of(result)
    assert images_of(result)[0].size == (256, 256)
    assert "account 1" in text_of(result)
    assert (tmp_path / "state").is_dir() and list(host_dir.iterdir()) == []


async def test_the_readme_stdio_entry_with_the_emulator_needs_no_env(tmp_path):
    # With no DATA_DIR the throwaway emulator state must not land in the host's working
    # directory, which may be unwritable (Claude Desktop on macOS starts servers in /): before,
    # submit_batch wrote ./.flux-proxy/files there, or failed with "Error executing tool".
    entry = stdio_entry()
    readme = README.read_text()
    assert '`"args": ["mcp", "--emulator"]` and no `env`' in readme
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    params = StdioServerParameters(
        command=installed_command(entry["command"]), args=["mcp", "--emulator"], cwd=host_dir
    )
    _, result = await call_over_stdio(params, tmp_path / "stderr.log", batch=True)
    assert not result.is_error, text_of(result)
    assert images_of(result)[0].size == (256, 256)
    assert list(host_dir.iterdir()) == []


async def test_the_readme_http_entry_reaches_mcp_with_its_header(make_proxy, emulator):
    entry = http_entry()
    url, headers = urlsplit(entry["url"]), entry["headers"]
    assert url.path == "/mcp"
    assert headers["Authorization"].startswith("Bearer ")
    key = headers["Authorization"].removeprefix("Bearer ")
    proxy = make_proxy(api_master_key=key)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(proxy.url + url.path, http_client=http)) as client,
    ):
        result = await client.call_tool("generate_image", SMALL)
    assert not result.is_error, text_of(result)
    assert images_of(result)[0].size == (256, 256)
