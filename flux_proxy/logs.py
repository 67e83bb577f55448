"""Structured logs: one line per event, as JSON or as `key=value` text (`LOG_FORMAT`).

Callers pass fields, never secrets or image data; `log_event` drops any field whose name
suggests a credential, as a second line of defence.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time

logger = logging.getLogger("flux_proxy")

_FORBIDDEN = ("token", "authorization", "api_key", "master_key", "secret", "password")


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}) or {})
        event = getattr(record, "event", None)
        if event is None:
            # A plain logging call (uvicorn, a library): name its source, keep its text apart.
            # uvicorn logs everything, errors or not, through "uvicorn.error": call it "server".
            event = "server" if record.name.startswith("uvicorn") else record.name
            fields["message"] = record.getMessage()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        if self.json:
            line = {"ts": stamp, "level": record.levelname.lower(), "event": event, **fields}
            if record.exc_info and record.levelno >= logging.ERROR:
                line["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            return json.dumps(line, default=str, ensure_ascii=False)
        parts = [stamp, record.levelname.lower().ljust(7), event]
        parts += [f"{k}={_text(v)}" for k, v in fields.items() if v is not None]
        return " ".join(parts)


def _text(value: object) -> str:
    text = str(value)
    return (
        json.dumps(text, ensure_ascii=False) if (" " in text or "=" in text or not text) else text
    )


# uvicorn's own loggers ("Started server process", server errors) go through the same handler,
# so LOG_FORMAT=json output is JSON throughout; uvicorn must then be started with
# `log_config=None`, or its default dictConfig replaces these handlers.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error")


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    server = logging.getLogger(SERVER_LOGGERS[0])
    server.handlers[:] = [handler]
    server.setLevel(level.upper())
    server.propagate = False
    for name in SERVER_LOGGERS[1:]:
        child = logging.getLogger(name)
        child.handlers[:] = []  # it propagates to "uvicorn", which has the handler
        child.setLevel(logging.NOTSET)  # and follows its level
        child.propagate = True


@functools.lru_cache(maxsize=512)
def _allowed(name: str) -> bool:
    # Cached: the same few dozen field names come by on every request.
    return not any(bad in name.lower() for bad in _FORBIDDEN)


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured line. Fields named like credentials are dropped, never printed."""
    if not logger.isEnabledFor(level):
        return
    safe = {k: v for k, v in fields.items() if _allowed(k)}
    # makeRecord + handle is what `logger.log` does, minus its walk up the stack for the
    # caller's file and line, which no line of ours prints.
    record = logger.makeRecord(
        logger.name, level, "flux_proxy", 0, event, (), None, extra={"event": event, "fields": safe}
    )
    logger.handle(record)
