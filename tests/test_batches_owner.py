"""Files and batches belong to the caller who made them: another (non-admin) caller is told
they do not exist (404), an admin sees everyone's. Until the keys file (teams) is on this
branch every HTTP key is an admin, so this drives the services with `Caller`s directly, over
a real SQLite store and real files on disk."""

from __future__ import annotations

import time

import pytest
from batch_helpers import generation_lines, jsonl

from flux_proxy.api.caller import Caller
from flux_proxy.clock import FrozenClock
from flux_proxy.errors import ApiError
from flux_proxy.metrics import Metrics
from flux_proxy.pool import AccountPool
from flux_proxy.settings import Settings
from flux_proxy.store.sqlite import SqliteStore
from flux_proxy.work.batch_service import open_batches

ALICE = Caller("alice", "user")
BOB = Caller("bob", "user")
ADMIN = Caller("master", "admin")


class _Services:
    def __init__(self, settings, clock, store, pool):
        self.settings, self.clock, self.store, self.pool = settings, clock, store, pool
        self.metrics = Metrics()
        self.quota = None  # no named keys here: callers are made by hand


@pytest.fixture
async def parts(tmp_path):
    clock = FrozenClock(time.time())
    store = SqliteStore(tmp_path / "state.sqlite3", clock)
    await store.open()
    settings = Settings(data_dir=tmp_path, accounts=[])
    pool = AccountPool(settings, client=None, store=store, clock=clock)
    yield open_batches(_Services(settings, clock, store, pool))
    await store.close()


async def test_another_callers_file_and_batch_are_not_found(parts):
    uploaded = await parts.files.upload("alice", "in.jsonl", "batch", jsonl(generation_lines(2)))
    batch = await parts.service.create(
        ALICE,
        {"input_file_id": uploaded["id"], "endpoint": "/v1/images/generations"},
        "http://proxy",
    )
    assert (await parts.service.get(ALICE, batch["id"]))["id"] == batch["id"]
    assert (await parts.files.get(uploaded["id"], ADMIN))["id"] == uploaded["id"]
    for attempt in (
        parts.files.get(uploaded["id"], BOB),
        parts.files.content(uploaded["id"], BOB),
        parts.files.delete(uploaded["id"], BOB),
        parts.service.get(BOB, batch["id"]),
        parts.service.cancel(BOB, batch["id"]),
        # Bob cannot run a batch over Alice's input file either.
        parts.service.create(
            BOB, {"input_file_id": uploaded["id"], "endpoint": "/v1/images/generations"}, ""
        ),
    ):
        with pytest.raises(ApiError) as refused:
            await attempt
        assert refused.value.status == 404
    assert (await parts.files.list(BOB, purpose=None, limit=10, after=None, order="desc"))[0] == []
    assert (await parts.service.list(BOB, limit=10, after=None))[0] == []
    assert len((await parts.service.list(ADMIN, limit=10, after=None))[0]) == 1


async def test_a_line_cannot_reference_another_callers_image_file(parts, png):
    image = await parts.files.upload("bob", "ref.png", "vision", png())
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/images/edits",
        "body": {"model": "flux-2-klein-4b", "prompt": "p", "image_file_ids": [image["id"]]},
    }
    uploaded = await parts.files.upload("alice", "in.jsonl", "batch", jsonl([line]))
    batch = await parts.service.create(
        ALICE, {"input_file_id": uploaded["id"], "endpoint": "/v1/images/edits"}, ""
    )
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["param"] == "image_file_ids"


async def test_an_admins_line_cannot_name_another_keys_image_file_either(parts, png):
    # The runner reads a line's files as the batch's owner: accepting the line would only
    # fail it later, when it runs.
    image = await parts.files.upload("bob", "ref.png", "vision", png())
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/images/edits",
        "body": {"model": "flux-2-klein-4b", "prompt": "p", "image_file_ids": [image["id"]]},
    }
    uploaded = await parts.files.upload("master", "in.jsonl", "batch", jsonl([line]))
    batch = await parts.service.create(
        ADMIN, {"input_file_id": uploaded["id"], "endpoint": "/v1/images/edits"}, ""
    )
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["param"] == "image_file_ids"
    own = await parts.files.upload("master", "mine.png", "vision", png())
    line["body"]["image_file_ids"] = [own["id"]]
    uploaded = await parts.files.upload("master", "in.jsonl", "batch", jsonl([line]))
    batch = await parts.service.create(
        ADMIN, {"input_file_id": uploaded["id"], "endpoint": "/v1/images/edits"}, ""
    )
    assert batch["status"] == "in_progress"
