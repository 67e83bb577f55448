"""`flux-proxy batch PROMPTS.txt`: many images through the Batch API, saved as they arrive.

A client of a running proxy, over HTTP only (Files and Batch API, as the `openai` SDK would
use them), so it works against any flux-proxy the caller can reach:

1. each non-blank line of PROMPTS.txt becomes one request line, `custom_id` = its line number
   (`0001`), with the chosen model, size and steps;
2. the JSONL goes up with `POST /v1/files` (`purpose=batch`), then `POST /v1/batches`;
3. the batch is polled with a progress bar; every image of the output is saved into `--out`
   as `<line>.<ext>` (`0001.png`) by an atomic rename, so a half-written file never counts.

Stopping (Ctrl+C) leaves the batch running on the proxy. `--resume BATCH_ID` picks it up again
and downloads only the images not already in `--out`. The exit code is 0 when every line has
its image, 1 when some line failed or the batch ended otherwise, 2 for a usage error (an
unreadable file, a refused key, an unknown `--resume` id), 130 when stopped. A proxy that
stops answering while the batch is followed (a restart) is waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flux_proxy.job import sniff_mime

KEY_VARIABLE = "FLUX_PROXY_API_KEY"
GENERATIONS = "/v1/images/generations"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


class BatchCliError(Exception):
    """Something the user must fix or know about; printed as one line, never a traceback."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the proxy's HTTP status, when it answered


# A proxy restarting, redeployed or briefly without its shared state: following a batch that
# runs for days waits for it instead of giving up (a 404 or 401 still ends the command).
PASSING_STATUSES = (502, 503, 504)


# --- arguments ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", type=Path, help="text file, one prompt per line")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the proxy's address")
    parser.add_argument(
        "--key", default=None, help=f"API key (default: ${KEY_VARIABLE}, which ps cannot see)"
    )
    parser.add_argument("--model", default=None, help="model for every line (proxy default)")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT for every line, e.g. 1024x768")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps for every line")
    parser.add_argument(
        "--window",
        default="24h",
        help="completion_window: 24h (OpenAI's), or the proxy's longer 48h, 72h, 7d, ...",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the images (default: ./BATCH_ID)"
    )
    parser.add_argument("--resume", metavar="BATCH_ID", help="follow an existing batch instead")
    parser.add_argument(
        "--poll", type=float, default=3.0, help="seconds between progress checks (default 3)"
    )


def prompt_lines(text: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Batch input lines, `custom_id` = the prompt's line number, zero-padded to 4+ digits."""
    rows = text.splitlines()
    width = max(4, len(str(len(rows))))
    return [
        {
            "custom_id": str(number).zfill(width),
            "method": "POST",
            "url": GENERATIONS,
            "body": {"prompt": row.strip(), **fields},
        }
        for number, row in enumerate(rows, start=1)
        if row.strip()
    ]


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.model:
        fields["model"] = args.model
    if args.size:
        fields["size"] = args.size
    if args.steps is not None:
        fields["steps"] = args.steps
    return fields


# --- the proxy's API ----------------------------------------------------------------------------


@dataclass
class Api:
    session: aiohttp.ClientSession
    root: str  # http://host:port, without /v1
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async with self.session.request(
            method, self.root + path, headers=self.headers, **kwargs
        ) as response:
            body = await response.read()
            return _checked(response.status, body, path)

    async def upload(self, content: bytes, filename: str) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        return await self._json("POST", "/v1/files", data=form)

    async def estimate(self, lines: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The proxy's estimate, or None when it has none to give (it is only a preview)."""
        body = {"endpoint": GENERATIONS, "bodies": [line["body"] for line in lines]}
        try:
            return await self._json("POST", "/v1/batches/estimate", json=body)
        except BatchCliError:
            return None

    async def create(self, file_id: str, window: str, title: str) -> dict[str, Any]:
        body = {
            "input_file_id": file_id,
            "endpoint": GENERATIONS,
            "completion_window": window,
            "metadata": {"source": "flux-proxy batch", "title": title[:120]},
        }
        return await self._json("POST", "/v1/batches", json=body)

    async def batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/batches/{batch_id}")

    async def content(self, file_id: str) -> bytes:
        return await self._bytes(f"/v1/files/{file_id}/content")

    async def finished_lines(self, batch_id: str) -> bytes:
        """The output lines made so far (the proxy's extension; the output file at the end)."""
        return await self._bytes(f"/v1/batches/{batch_id}/output")

    async def _bytes(self, path: str) -> bytes:
        async with self.session.get(f"{self.root}{path}", headers=self.headers) as response:
            body = await response.read()
            if response.status != 200:
                _checked(response.status, body, path)
            return body

    async def image(self, url: str) -> bytes:
        """A URL the output names: the proxy's own image files need no key, and no key is sent
        to an address that is not the proxy."""
        headers = self.headers if url.startswith(self.root + "/") else {}
        async with self.session.get(url, headers=headers) as response:
            if response.status != 200:
                status = response.status
                raise BatchCliError(f"downloading {url} answered {status}", status)
            return await response.read()


def _checked(status: int, body: bytes, path: str) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if status >= 400 or not isinstance(data, dict):
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise BatchCliError(f"{path} answered {status}: {message or 'no error message'}", status)
    return data


def api_root(url: str) -> str:
    root = url.rstrip("/")
    return root.removesuffix("/v1")


# --- saving images ------------------------------------------------------------------------------


def saved_stems(out: Path) -> set[str]:
    """Lines already saved: `0001.png` -> `0001` (temporary `.part` files do not count)."""
    return {path.stem for path in out.iterdir() if path.is_file() and path.suffix != ".part"}


def write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, path)


async def save_missing(api: Api, output: bytes, out: Path, console: Console) -> int:
    """Save every image of the output file whose line is not in `out` yet; returns how many."""
    have = saved_stems(out)
    saved = 0
    for raw in output.splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        data = ((line.get("response") or {}).get("body") or {}).get("data") or []
        stem = safe_stem(str(line.get("custom_id", "")))
        for index, item in enumerate(data):
            name = stem if len(data) == 1 else f"{stem}-{index + 1}"
            if name in have:
                continue
            if item.get("b64_json"):
                image = base64.b64decode(item["b64_json"])
            elif item.get("url"):
                image = await api.image(item["url"])
            else:
                continue
            extension = EXTENSIONS.get(sniff_mime(image), "bin")
            write_atomically(out / f"{name}.{extension}", image)
            console.print(f"saved {name}.{extension}", highlight=False)
            saved += 1
    return saved


def safe_stem(custom_id: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in custom_id).lstrip("._")
    return cleaned[:100] or "line"


# --- the run ------------------------------------------------------------------------------------


def describe_estimate(estimate: dict[str, Any]) -> str:
    neurons = f"≈ {round(float(estimate.get('estimated_neurons') or 0)):,} neurons"
    days = estimate.get("estimated_days")
    if not isinstance(days, int | float):
        return neurons
    if days <= 1:
        return f"{neurons}: at today's budgets it fits in today"
    return f"{neurons}: at today's budgets about {-(-days // 1):.0f} days"


def eta_text(batch: dict[str, Any]) -> str:
    eta = batch.get("estimated_completion_at")
    if not isinstance(eta, int | float) or batch.get("status") in TERMINAL:
        return ""
    return "≈ done " + time.strftime("%a %H:%M UTC", time.gmtime(eta))


async def submit(api: Api, args: argparse.Namespace, console: Console) -> str:
    try:
        text = args.prompts.read_text(encoding="utf-8")
    except OSError as error:
        raise BatchCliError(f"cannot read {args.prompts}: {error.strerror}") from None
    lines = prompt_lines(text, request_fields(args))
    if not lines:
        raise BatchCliError(f"{args.prompts} has no prompts (one per line)")
    estimate = await api.estimate(lines)
    if estimate:
        console.print(describe_estimate(estimate), highlight=False)
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await api.upload(content, args.prompts.with_suffix(".jsonl").name)
    batch = await api.create(uploaded["id"], args.window, lines[0]["body"]["prompt"])
    return str(batch["id"])


async def follow(api: Api, batch_id: str, out: Path, poll: float, console: Console) -> int:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(batch_id, total=None, failed="", eta="")
        while True:
            try:
                batch = await _look(api, batch_id, out, console, progress, task)
            except (aiohttp.ClientError, TimeoutError, BatchCliError) as error:
                if isinstance(error, BatchCliError) and error.status not in PASSING_STATUSES:
                    raise
                progress.update(task, eta="the proxy does not answer; trying again")
                await asyncio.sleep(max(poll, 1.0))
                continue
            if batch.get("status") in TERMINAL:
                break
            await asyncio.sleep(poll)
    return await report(api, batch, out, console)


async def _look(
    api: Api, batch_id: str, out: Path, console: Console, progress: Progress, task: Any
) -> dict[str, Any]:
    """One check of the batch: the bar brought up to date, and the images that are new saved."""
    batch = await api.batch(batch_id)
    counts = batch.get("request_counts") or {}
    failed = int(counts.get("failed") or 0)
    progress.update(
        task,
        description=f"{batch_id} {batch.get('status')}",
        total=int(counts.get("total") or 0) or None,
        completed=int(counts.get("completed") or 0) + failed,
        failed=f"{failed} failed" if failed else "",
        eta=eta_text(batch),
    )
    progress.refresh()  # the "saved" lines below print under the bar as it is now
    # Each check saves whatever lines are new: the proxy publishes finished lines as they
    # are made, not only in the output file at the end as OpenAI does.
    if int(counts.get("completed") or 0) > len(saved_stems(out)) or batch.get("output_file_id"):
        await save_missing(api, await api.finished_lines(batch_id), out, console)
    return batch


async def report(api: Api, batch: dict[str, Any], out: Path, console: Console) -> int:
    counts = batch.get("request_counts") or {}
    status = batch.get("status")
    for error in (batch.get("errors") or {}).get("data") or []:
        where = f"line {error.get('line')}" if error.get("line") else "batch"
        console.print(f"{where}: {error.get('message')}", highlight=False, style="red")
    if batch.get("error_file_id"):
        for raw in (await api.content(batch["error_file_id"])).splitlines():
            if raw.strip():
                line = json.loads(raw)
                error = line.get("error") or {}
                console.print(
                    f"{line.get('custom_id')}: {error.get('code')}: {error.get('message')}",
                    highlight=False,
                    style="red",
                )
    total = int(counts.get("total") or 0)
    console.print(
        f"{batch['id']} {status}: {counts.get('completed', 0)} of {total} done, images in {out}",
        highlight=False,
    )
    complete = status == "completed" and int(counts.get("failed") or 0) == 0
    return EXIT_OK if complete else EXIT_INCOMPLETE


async def main_async(args: argparse.Namespace, console: Console, state: dict[str, Any]) -> int:
    key = args.key or os.environ.get(KEY_VARIABLE, "")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = Api(session, api_root(args.url), key)
        if args.resume:
            await api.batch(args.resume)  # a wrong id or key is a usage error: no folder made
        batch_id = args.resume or await submit(api, args, console)
        state["batch_id"] = batch_id
        out = args.out or Path(batch_id)
        state["out"] = out
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            console.print(f"submitted {batch_id}", highlight=False)
        return await follow(api, batch_id, out, args.poll, console)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=False, highlight=False)
    state: dict[str, Any] = {}
    try:
        return asyncio.run(main_async(args, console, state))
    except BatchCliError as error:
        print(f"flux-proxy batch: {error}", file=sys.stderr)
        return EXIT_INCOMPLETE if state.get("batch_id") else EXIT_USAGE
    except aiohttp.ClientError as error:
        print(f"flux-proxy batch: cannot reach {args.url}: {error}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        if state.get("batch_id"):
            print(
                f"\nstopped; the batch goes on. Resume with: flux-proxy batch {args.prompts} "
                f"--url {args.url} --resume {state['batch_id']} --out {state['out']}",
                file=sys.stderr,
            )
        return EXIT_STOPPED
