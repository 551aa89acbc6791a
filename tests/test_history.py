"""The one history rule chat and serve share (edgellm.text.history): pure, table-tested."""

from __future__ import annotations

import random

import pytest

from edgellm.text.history import fewest_to_drop, history_room, turn_starts


@pytest.mark.parametrize(("n_ctx", "max_tokens", "room"), [
    (4096, None, 1024),  # a quarter when no max_tokens is asked for
    (4096, 100, 100),
    (4096, 3000, 2048),  # at most half the context
    (4096, 0, 1024),  # 0 reads as "not asked" (OpenAI clients send it for "no limit")
])
def test_history_room(n_ctx: int, max_tokens: int | None, room: int) -> None:
    assert history_room(n_ctx, max_tokens) == room


def test_turn_starts_are_the_start_and_each_later_user_message() -> None:
    roles = ["user", "assistant", "tool", "assistant", "user", "assistant", "user"]
    assert turn_starts([{"role": r} for r in roles]) == [0, 4, 6]
    assert turn_starts([{"role": "assistant"}, {"role": "user"}]) == [0, 1]
    assert turn_starts([]) == [0]


def test_fewest_to_drop_matches_a_linear_search() -> None:
    rng = random.Random(7)
    for _ in range(500):
        starts = sorted(rng.sample(range(100), rng.randint(1, 20)))
        threshold = rng.randint(-5, 105)  # a prompt fits once enough is dropped (monotone)
        calls: list[int] = []

        def fits(cut: int, threshold: int = threshold, calls: list[int] = calls) -> bool:
            calls.append(cut)
            return cut >= threshold

        linear = next((i for i, cut in enumerate(starts) if cut >= threshold), len(starts) - 1)
        assert fewest_to_drop(starts, fits) == linear
        assert len(calls) <= 2 + len(starts).bit_length()  # a handful of template runs, not one per turn
