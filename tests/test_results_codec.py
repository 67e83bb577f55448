"""The stored form of a kept result (`work/results.py`): the cache status travels with it, and
results kept by an older proxy (no cache status in their header) still decode."""

from __future__ import annotations

import orjson

from flux_proxy.job import GeneratedImage
from flux_proxy.work.results import MadeImage, WorkResult, decode_result, encode_result


def a_result(cache: str) -> WorkResult:
    image = GeneratedImage.from_bytes(
        b"\x89PNG fake", mime="image/png", account=1, neurons=1.5, seed=7
    )
    return WorkResult("img_1", 1_700_000_000, [MadeImage(0, image, 7, cached=True)], cache=cache)


def test_the_cache_status_is_kept_with_the_result():
    for cache in ("hit", "miss", "bypass"):
        assert decode_result(encode_result(a_result(cache))).cache == cache


def test_a_result_stored_without_a_cache_status_decodes_as_bypass():
    stored = encode_result(a_result("hit"))
    end = stored.index(b"\n")
    header = orjson.loads(stored[:end])
    del header["cache"]  # what a proxy before this change wrote
    old = orjson.dumps(header) + stored[end:]
    result = decode_result(old)
    assert result.cache == "bypass"
    assert result.images[0].image.data == b"\x89PNG fake" and result.id == "img_1"
