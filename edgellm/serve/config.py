"""What `edgellm serve` was started with (ServerConfig): plain data, read by the routes, the
request translation and the engine host alike. Imports nothing of serve's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edgellm.runtime.types import DEFAULT_THINK_MESSAGE

DEFAULT_QUEUE_SIZE = 8
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass
class ServerConfig:
    model_id: str
    api_key: str | None = None
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    queue_size: int = DEFAULT_QUEUE_SIZE  # requests that may wait while one generates
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # None: any Host header (a public bind, protected by the key); else loopback names plus these.
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] = field(default_factory=list)
    # Chat histories longer than a slot: drop the oldest turns ("oldest", as `edgellm chat` does) or 400 ("error").
    truncate: str = "oldest"
    # Reasoning: the default budget (None: the model decides; 0: no reasoning), the budgets of
    # reasoning_effort, and the bridge line written when a budget runs out.
    think_budget: int | None = None
    effort_budgets: dict[str, int] = field(default_factory=lambda: {"low": 256, "medium": 1024, "high": 4096})
    think_message: str = DEFAULT_THINK_MESSAGE
    # Free the model after this many seconds without requests; the next request loads it again.
    idle_unload_s: float | None = None
    # Whether clients may pull and delete models (/api/pull, /api/delete): not on a server that
    # listens beyond this machine without a key, unless its owner said --allow-pull.
    allow_pull: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
