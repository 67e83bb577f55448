"""The work layer: between every entry point (HTTP, async jobs, batch lines, MCP) and the pool.

`ImageWork.produce` (`produce.py`) makes the images of one `ImageRequest` so that nothing paid
for is lost and nothing is paid twice: a call that was sent runs to its end even when its
caller left, and the result is kept for a retry (`results.py`); a repeat attaches to the work
instead of paying again (`repeats.py`); seeded images come from a content-addressed cache
(`cache.py`). Keys come from `fingerprint.py`.
"""

from flux_proxy.work.produce import CachePolicy, ImageWork, WorkResult

__all__ = ["CachePolicy", "ImageWork", "WorkResult"]
