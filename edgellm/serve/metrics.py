"""Counters for `edgellm serve`'s GET /metrics, in Prometheus's text exposition format. Pure."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

# Seconds to the first token: a Pi answers in seconds, a queued request waits for minutes.
TTFT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Totals since the server started; thread-safe (the scheduler's thread adds tokens)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.generations = 0
        self.model_unloads = 0  # --idle-unload (or a request's keep_alive 0) freed the model
        self.model_reloads = 0  # and a request loaded it again

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def generation(self, prompt_tokens: int, generated_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.generated_tokens += generated_tokens
            self.generations += 1

    def first_token(self, seconds: float) -> None:
        with self._lock:
            index = next((i for i, bound in enumerate(TTFT_BUCKETS) if seconds <= bound), len(TTFT_BUCKETS))
            self.ttft_counts[index] += 1
            self.ttft_sum += seconds

    def unloaded(self) -> None:
        with self._lock:
            self.model_unloads += 1

    def reloaded(self) -> None:
        with self._lock:
            self.model_reloads += 1

    def render(self, *, slots: int, busy: int, queued: int, loaded: bool = True,
               models: Sequence[tuple[str, int, int, int, bool]] = ()) -> str:
        """The text; the gauges are totals over the models (no label) and, when `models` lists them
        (name, slots, busy, queued, loaded), each model's under a `model` label too."""
        with self._lock:
            lines = [
                "# HELP edgellm_requests_total HTTP requests answered, by path and status.",
                "# TYPE edgellm_requests_total counter",
            ]
            lines += [f'edgellm_requests_total{{path="{_label(path)}",status="{status}"}} {count}'
                      for (path, status), count in sorted(self.requests.items())]
            lines += _metric("edgellm_prompt_tokens_total", "counter", "Prompt tokens of finished generations.", self.prompt_tokens)
            lines += _metric("edgellm_generated_tokens_total", "counter", "Tokens generated.", self.generated_tokens)
            def each(pick: Callable[[int, int, int, bool], float]) -> dict[str, float]:
                return {name: pick(n_slots, n_busy, n_queued, is_loaded) for name, n_slots, n_busy, n_queued, is_loaded in models}

            lines += _metric("edgellm_slots", "gauge", "Sequences the server generates at once (--parallel).", slots,
                             each(lambda s, b, q, _up: s))
            lines += _metric("edgellm_slots_busy", "gauge", "Slots generating now.", busy, each(lambda s, b, q, _up: b))
            lines += _metric("edgellm_slots_idle", "gauge", "Slots free now.", slots - busy, each(lambda s, b, q, _up: s - b))
            lines += _metric("edgellm_queue_depth", "gauge", "Requests waiting for a slot.", queued, each(lambda s, b, q, _up: q))
            lines += _metric("edgellm_model_loaded", "gauge", "1 while the model is in memory (0: freed by --idle-unload).", int(loaded),
                             each(lambda s, b, q, up: int(up)))
            lines += _metric("edgellm_model_unloads_total", "counter", "Times the model was freed (--idle-unload, keep_alive 0).", self.model_unloads)
            lines += _metric("edgellm_model_reloads_total", "counter", "Times a request loaded the model again.", self.model_reloads)
            lines += [
                "# HELP edgellm_time_to_first_token_seconds From the request to its first generated token.",
                "# TYPE edgellm_time_to_first_token_seconds histogram",
            ]
            running = 0
            for bound, count in zip((*TTFT_BUCKETS, float("inf")), self.ttft_counts, strict=True):
                running += count
                shown = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'edgellm_time_to_first_token_seconds_bucket{{le="{shown}"}} {running}')
            lines.append(f"edgellm_time_to_first_token_seconds_sum {self.ttft_sum:.6f}")
            lines.append(f"edgellm_time_to_first_token_seconds_count {running}")
        return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, help_text: str, value: float, by_model: dict[str, float] | None = None) -> Iterable[str]:
    labelled = [f'{name}{{model="{_label(model)}"}} {count}' for model, count in (by_model or {}).items()]
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}", *labelled]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
