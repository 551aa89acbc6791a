"""What a generation takes (SamplingParams, Prompt) and gives (TextEvent, call events,
GenerationStats): plain data, shared by the engine, the scheduler and every front end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgellm.text.toolcalls.formats import ToolUse
from edgellm.text.toolcalls.parser import CallEvent

# The bridge line before the closing tag when the thinking budget runs out: the model reads it,
# so the answer that follows starts from a decision rather than mid-thought.
DEFAULT_THINK_MESSAGE = "\n\nI have thought about this long enough; time to give the answer."



@dataclass
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.6  # DeepSeek's recommendation for the R1 distills
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0  # OpenAI-style, over the last penalty_last_n tokens
    presence_penalty: float = 0.0
    penalty_last_n: int = 64  # tokens the three penalties look back over (0: none), as llama-cpp-python's last_n_tokens_size
    typical_p: float = 1.0  # locally typical sampling (1.0: off)
    seed: int | None = None
    grammar: str | None = None  # GBNF text
    json_schema: str | None = None  # JSON Schema text, turned into a grammar by llama.cpp
    ignore_eos: bool = False  # benchmarks generate a fixed number of tokens
    # False: no reasoning split, every piece is answer text with the model's tags as written
    # (JSON mode, where the grammar owns every token; raw completions).
    split_reasoning: bool = True
    # Answer text ends before the first of these (not included); the sequence stops generating.
    stop: list[str] = field(default_factory=list)
    # Tool calling: the tools, the choice and the model's call format (None: no tools).
    tool_use: ToolUse | None = None
    # Reasoning tokens after which the engine ends the reasoning itself (None: the model decides).
    think_budget: int | None = None
    # Skip the reasoning: the prompt ends with an empty reasoning block, the reply is all answer.
    no_think: bool = False

    # The grammar describes the answer alone (JSON modes: --schema, response_format): without a
    # budget the reply skips its reasoning, so the JSON is the answer. A raw grammar without a budget
    # owns every token and may spell out "reasoning</think>answer" itself.
    grammar_is_answer: bool = False

    @property
    def skips_reasoning(self) -> bool:
        """No reasoning in this reply: asked for, or an answer grammar with no budget to reason first.
        (With a budget any grammar waits: the reply reasons, then the grammar holds the answer.)"""
        return self.no_think or (self.grammar_is_answer and self.think_budget is None)
    # Written into the reasoning before the engine closes it, as llama-server's --reasoning-budget-message.
    think_message: str = DEFAULT_THINK_MESSAGE



@dataclass
class TextEvent:
    kind: str  # "reasoning" or "answer"
    text: str



@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0  # fewer than prompt_tokens when the KV cache was reused
    generated_tokens: int = 0
    reasoning_tokens: int = 0  # of generated_tokens, those the model wrote inside its reasoning
    load_s: float = 0.0
    ttft_s: float = 0.0
    prompt_tps: float = 0.0
    gen_tps: float = 0.0
    peak_rss_bytes: int = 0
    finish_reason: str = "stop"  # stop | length | interrupted
    n_ctx: int = 0
    context_used: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



Event = TextEvent | GenerationStats | CallEvent



@dataclass(frozen=True)
class Prompt:
    """A prompt ready to generate from: its tokens, and whether the chat template opened <think>."""

    tokens: list[int]
    opens_think: bool = False
    closes_think: bool = False  # the template wrote an empty reasoning block: the reply is all answer



class GenerationInterrupted(Exception):
    """Ctrl-C during generation; carries the stats of what was generated so far."""

    def __init__(self, stats: GenerationStats, held: list[TextEvent] | None = None) -> None:
        super().__init__("interrupted")
        self.stats = stats
        # Text the reasoning splitter was still holding (a possible tag); it belongs to the reply.
        self.held = held or []
