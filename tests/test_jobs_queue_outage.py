"""Job workers while their queue is away (Redis down): they keep retrying, and say so once
per outage, not once per worker per retry."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flux_proxy.clock import Clock
from flux_proxy.metrics import Metrics
from flux_proxy.store.memory import MemoryStore
from flux_proxy.work import jobs
from flux_proxy.work.jobs import JobService
from flux_proxy.work.queue import MemoryQueue


class FlakyQueue(MemoryQueue):
    """A MemoryQueue whose claims fail while `down` is set, as a RedisQueue's do."""

    down = True

    async def claim(self, kind, consumer, lease):
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        return await super().claim(kind, consumer, lease)


@pytest.fixture
def events():
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("flux_proxy")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_an_unreachable_queue_is_logged_once_per_outage_and_its_return_too(
    monkeypatch, events
):
    monkeypatch.setattr(jobs, "BACKOFF", 0.01)
    queue = FlakyQueue(Clock())
    service = JobService(MemoryStore(), queue, Clock(), Metrics(), workers=4, poll_interval=0.01)
    await service.start()
    try:
        await asyncio.sleep(0.3)  # some 100 failed claims across the four workers
        queue.down = False
        await asyncio.sleep(0.1)
    finally:
        await service.stop()
    names = [r.getMessage() for r in events if r.getMessage().startswith("job_queue")]
    assert names == ["job_queue_unavailable", "job_queue_recovered"]
