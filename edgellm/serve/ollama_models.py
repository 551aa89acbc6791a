"""A served model as Ollama's API describes it: /api/tags (ListModelResponse), /api/show
(ShowResponse) and /api/ps (ProcessModelResponse), from its GGUF header and its plan. Pure: the
digest (the file's sha256, edgellm.store.digest) is computed by the caller and handed in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from edgellm.plan.planner import Plan
from edgellm.runtime.types import SamplingParams
from edgellm.serve.ollama_translate import ollama_name, timestamp
from edgellm.store.gguf import ModelInfo

# What /api/ps says of a model that never unloads (Ollama shows its largest time, in 2318).
NEVER = timedelta(days=292 * 365)


def parameter_size(count: int) -> str:
    """Ollama's parameter_size: '7.6B', '494.03M', '136.73K'."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.2f}K"
    return str(count)


@dataclass
class OllamaModel:
    """One served model: `model_id` is its id on /v1 (--alias or the file's stem)."""

    model_id: str
    info: ModelInfo
    plan: Plan
    slot_ctx: int  # the context every request gets
    fim: bool  # the vocabulary has fill-in-the-middle tokens (generate's suffix)

    @property
    def name(self) -> str:
        return ollama_name(self.model_id)

    @property
    def capabilities(self) -> list[str]:
        """completion always; tools always (every template gets a call format: its own, or the
        generic one edgellm describes in the system prompt); thinking for reasoning models;
        insert for fill-in-the-middle. Never embedding: this server serves no embeddings."""
        return ["completion", "tools", *(["thinking"] if self.info.thinks else []), *(["insert"] if self.fim else [])]

    @property
    def modified_at(self) -> str:
        try:
            mtime = os.stat(self.info.path).st_mtime if self.info.path else 0.0
        except OSError:
            mtime = 0.0
        return timestamp(datetime.fromtimestamp(mtime, timezone.utc))

    def details(self) -> dict[str, Any]:
        arch = self.info.arch
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                "parameter_size": parameter_size(self.info.n_params), "quantization_level": self.info.quant}

    def tag(self, digest: str) -> dict[str, Any]:
        return {"name": self.name, "model": self.name, "modified_at": self.modified_at, "size": self.info.file_size,
                "digest": digest, "details": self.details(), "capabilities": self.capabilities}

    def running(self, digest: str, expires_in_s: float | None) -> dict[str, Any]:
        """The /api/ps entry: memory the plan gives it (weights, KV cache, compute), all on the CPU."""
        expires = datetime.now(timezone.utc) + (timedelta(seconds=expires_in_s) if expires_in_s is not None else NEVER)
        return {"name": self.name, "model": self.name, "size": self.plan.total_bytes, "digest": digest,
                "details": self.details(), "expires_at": timestamp(expires), "size_vram": 0, "context_length": self.slot_ctx}

    def model_info(self) -> dict[str, Any]:
        """The GGUF keys edgellm reads, as Ollama's model_info lists them (no vocabulary arrays)."""
        info, arch = self.info, self.info.arch
        return {
            "general.architecture": arch,
            "general.name": info.name,
            "general.parameter_count": info.n_params,
            f"{arch}.block_count": info.n_layers,
            f"{arch}.context_length": info.context_length,
            f"{arch}.embedding_length": info.n_embd,
            f"{arch}.feed_forward_length": info.n_ff,
            f"{arch}.attention.head_count": info.n_head,
            f"{arch}.attention.head_count_kv": info.n_head_kv,
            f"{arch}.attention.key_length": info.head_dim_k,
            f"{arch}.attention.value_length": info.head_dim_v,
            f"{arch}.vocab_size": info.n_vocab,
        }

    def parameters(self, defaults: SamplingParams) -> str:
        """Ollama's `parameters` text (one `name value` line each): the server's sampling defaults,
        and num_ctx, the context a request gets (clients such as Continue read it)."""
        values = [("num_ctx", self.slot_ctx), ("temperature", defaults.temperature), ("top_k", defaults.top_k),
                  ("top_p", defaults.top_p), ("min_p", defaults.min_p), ("repeat_penalty", defaults.repeat_penalty)]
        return "\n".join(f"{name:<30} {value:g}" if isinstance(value, float) else f"{name:<30} {value}" for name, value in values)

    def show(self) -> dict[str, Any]:
        return {
            "license": "",
            "modelfile": f"# Served by edgellm: {self.model_id}\nFROM {self.info.path}\n",
            "parameters": self.parameters(SamplingParams()),
            "template": self.info.chat_template or "",
            "details": {**self.details(), "context_length": self.slot_ctx},
            "model_info": self.model_info(),
            "capabilities": self.capabilities,
            "modified_at": self.modified_at,
        }
