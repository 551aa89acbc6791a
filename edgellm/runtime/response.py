"""One generation's result, built from its event stream: the one consumer every front end uses.

Modelled on simonw/llm's `Response`: iterate it to stream the text as it is generated (the
engine's events can be read once); iterate it again and it replays what it kept. `answer`,
`reasoning`, `stats` and `interrupted` say how it ended. Ctrl-C ends the stream early with the
partial result instead of an exception: the engine's GenerationInterrupted is folded in, and a
consumer that catches KeyboardInterrupt between events calls `interrupt()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from edgellm.runtime.types import Event, GenerationInterrupted, GenerationStats, TextEvent
from edgellm.text.reasoning import ANSWER, REASONING
from edgellm.text.toolcalls.parser import (
    ToolCall,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)


class Response:
    """The events of one generation: streamed once, then replayed; or fed one by one with add()."""

    def __init__(self, events: Iterable[Event] | None = None) -> None:
        self._source: Iterator[Event] | None = iter(events) if events is not None else None
        self.pieces: list[TextEvent] = []
        self.tool_calls: list[ToolCall] = []  # as they arrive; complete ones have parsing arguments
        self.stats: GenerationStats | None = None
        self.interrupted = False
        self._live: Iterator[Event] | None = None  # the source while it is being streamed

    # -- filling it --

    def add(self, event: Any) -> TextEvent | None:
        """Record one event; returns it when it is text. Front ends that receive events some
        other way (serve, from the scheduler's thread) feed them here."""
        if isinstance(event, GenerationStats):
            self.stats = event
            if event.finish_reason == "interrupted":
                self.interrupted = True
            return None
        if isinstance(event, TextEvent):
            self.pieces.append(event)
            return event
        if isinstance(event, ToolCallStart):
            self.tool_calls.append(ToolCall(id=event.id, name=event.name))
        elif isinstance(event, ToolCallArguments) and event.index < len(self.tool_calls):
            self.tool_calls[event.index].arguments += event.text
        elif isinstance(event, ToolCallEnd) and event.index < len(self.tool_calls):
            self.tool_calls[event.index].complete = True
        return None

    @property
    def complete_calls(self) -> list[ToolCall]:
        """The calls whose arguments closed (a reply cut by max_tokens may end inside one)."""
        return [call for call in self.tool_calls if call.complete]

    def __iter__(self) -> Iterator[TextEvent]:
        """Text as it is generated the first time; what was kept on later passes."""
        source, self._source = self._source, None
        if source is None:
            yield from list(self.pieces)
            return
        self._live = source
        try:
            for event in source:
                text = self.add(event)
                if text is not None:
                    yield text
        except GenerationInterrupted as stopped:
            yield from self._take_interrupted(stopped)

    def interrupt(self) -> list[TextEvent]:
        """Ctrl-C landed in the consumer, between two events: stop the generation and keep the
        partial result. Returns text the engine still held (a possible tag), now recorded too."""
        source = self._live or self._source
        self._source = None
        self.interrupted = True
        throw = getattr(source, "throw", None)
        if throw is None:
            return []
        try:
            throw(KeyboardInterrupt())
        except GenerationInterrupted as stopped:
            return list(self._take_interrupted(stopped))
        except (KeyboardInterrupt, StopIteration):
            pass
        return []

    def _take_interrupted(self, stopped: GenerationInterrupted) -> Iterator[TextEvent]:
        self.interrupted = True
        for event in stopped.held:  # text the reasoning splitter held: it belongs to the reply
            self.add(event)
            yield event
        self.add(stopped.stats)

    def finish(self, write: Callable[[TextEvent], None] | None = None) -> Response:
        """Read the stream to its end, passing each text event to `write`; returns self. A Ctrl-C
        between two events stops the generation and keeps the partial reply (`interrupted`)."""
        try:
            for event in self:
                if write is not None:
                    write(event)
        except KeyboardInterrupt:
            for event in self.interrupt():
                if write is not None:
                    write(event)
        return self

    # -- reading it --

    @property
    def answer(self) -> str:
        return "".join(piece.text for piece in self.pieces if piece.kind == ANSWER)

    @property
    def reasoning(self) -> str:
        return "".join(piece.text for piece in self.pieces if piece.kind == REASONING)

    @property
    def finish_reason(self) -> str | None:
        if self.interrupted:
            return "interrupted"
        return self.stats.finish_reason if self.stats is not None else None

    @property
    def generated_tokens(self) -> int:
        return self.stats.generated_tokens if self.stats is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "reasoning": self.reasoning,
            "finish_reason": self.finish_reason,
            **({"tool_calls": [call.to_json() for call in self.complete_calls]} if self.tool_calls else {}),
            "stats": self.stats.to_json() if self.stats is not None else None,
        }
