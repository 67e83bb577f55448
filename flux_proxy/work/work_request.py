"""`WorkRequest`: one `ImageWork.produce` call's context, handed to every part of the work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from flux_proxy.api.parse import ImageRequest
from flux_proxy.work.cache import CachePolicy
from flux_proxy.work.fingerprint import Fingerprint
from flux_proxy.work.first_look import FirstLookSink, OnFirstLook

BeforeSend = Callable[[], Awaitable[None]]


class WorkRequest:
    """What was asked, by whom, and how; the fingerprint is computed at most once.

    `before_send` is passed to the pool with every image (`CallProgress.before_send`): it is
    awaited just before an upstream call is sent, and its exception stops that call."""

    def __init__(
        self,
        request: ImageRequest,
        caller: str,
        request_id: str,
        cache: CachePolicy,
        on_first_look: OnFirstLook | None,
        before_send: BeforeSend | None = None,
    ):
        self.request = request
        self.caller = caller
        self.request_id = request_id
        self.cache = cache
        self.look = FirstLookSink(on_first_look, request.n)
        self.before_send = before_send
        self._fingerprint: Fingerprint | None = None

    @property
    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = Fingerprint(self.request)
        return self._fingerprint
