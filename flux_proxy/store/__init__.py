"""Where the pool keeps what it learns, and where URL responses keep their images."""

from flux_proxy.store.base import Block, BlockKind, Reservation, StateStore, Usage

__all__ = ["Block", "BlockKind", "Reservation", "StateStore", "Usage"]
