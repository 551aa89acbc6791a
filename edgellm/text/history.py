"""How much of a chat's history a prompt keeps: one rule for `edgellm chat` and for serve.

Pure: the caller counts tokens (its template, its tools) through the callback it passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def history_room(n_ctx: int, max_tokens: int | None) -> int:
    """Tokens kept free for the reply when deciding whether history must be dropped: the reply's
    max_tokens, at most half the context; a quarter of the context when none is asked for."""
    return min(max_tokens or n_ctx // 4, n_ctx // 2)


def turn_starts(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Where the history may restart when older turns are dropped: the start, and each later user
    message (turns go whole, so a reply never loses the question it answers)."""
    return [0] + [i for i in range(1, len(messages)) if messages[i].get("role") == "user"]


def fewest_to_drop(starts: Sequence[int], fits: Callable[[int], bool]) -> int:
    """The index into `starts` of the first cut whose prompt fits (`fits(starts[i])`), the last
    index when none does. Dropping more never makes a prompt longer, so a binary search finds it
    in a handful of template runs, not one per turn (a 4,000-turn history made 4,000)."""
    if fits(starts[0]):
        return 0
    low, high = 1, len(starts) - 1
    while low < high:
        middle = (low + high) // 2
        if fits(starts[middle]):
            high = middle
        else:
            low = middle + 1
    return min(low, len(starts) - 1)
