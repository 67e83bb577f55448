"""Pick the state store the settings ask for. Callers then `await store.open()` and, on
shutdown, `await store.close()`."""

from __future__ import annotations

from pathlib import Path

from flux_proxy.clock import Clock
from flux_proxy.settings import ConfigError, Settings
from flux_proxy.store.base import StateStore
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.redis import RedisStore
from flux_proxy.store.resilient import ResilientStore
from flux_proxy.store.sqlite import SqliteStore

SQLITE_FILE = "state.sqlite3"


def open_store(settings: Settings, clock: Clock) -> StateStore:
    backend = settings.resolved_state_backend
    if backend == "memory":
        return MemoryStore(clock)
    if backend == "sqlite":
        data_dir = Path(settings.data_dir)
        return SqliteStore(data_dir / SQLITE_FILE, clock, blob_dir=data_dir / "images")
    if backend == "redis":
        if not settings.redis_url:
            raise ConfigError("STATE_BACKEND=redis needs REDIS_URL")
        primary = RedisStore(settings.redis_url, settings.redis_prefix, clock)
        return ResilientStore(primary, MemoryStore(clock), clock=clock)
    raise ConfigError(f"STATE_BACKEND={backend!r} is not memory, sqlite, redis or auto")
