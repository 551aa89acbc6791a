"""One job's events as an OpenAI response: a JSON body, or server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgellm.runtime.types import Prompt, SamplingParams, TextEvent
from edgellm.serve.errors import as_api_error
from edgellm.serve.jobs import END, Failure, GenerationJob, Item, ItemReader, answer_from_first
from edgellm.text.reasoning import REASONING
from edgellm.text.toolcalls.parser import ToolCallArguments, ToolCallStart

# Starts a generation job for (prompt, params, request id), or raises the API error that refuses it.
StartJob = Callable[[Prompt, SamplingParams, str], GenerationJob]


class Reply:
    """Turns one job's events into an OpenAI response (JSON or server-sent events)."""

    def __init__(
        self, request: Request, start_job: StartJob, model_id: str, kind: str, stream: bool
    ) -> None:
        self.request = request
        self.start_job = start_job
        self.model_id = model_id
        self.kind = kind  # "chat.completion" or "text_completion"
        self.stream = stream
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.log: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("edgellm", {})
        self.headers: dict[str, str] = {}
        self.log["tokens"] = 0

    async def respond(self, prompt: Prompt, params: SamplingParams, *, include_usage: bool) -> Response:
        job = self.start_job(prompt, params, self.id)
        reader = ItemReader(job, self.request, streamed=self.stream)

        async def respond(first: Item) -> Response:
            if not self.stream:
                return await self._collect(first, reader)
            return StreamingResponse(self._sse(first, reader, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **self.headers})

        return await answer_from_first(job, reader, self.log, respond)

    def _pieces(self, item: Item) -> list[tuple[str, Any]]:
        """(field, value) pairs for an event: 'reasoning_content' or 'content' with text, or
        'tool_calls' with one OpenAI delta.tool_calls entry."""
        if isinstance(item, ToolCallStart):
            return [("tool_calls", {"index": item.index, "id": item.id, "type": "function",
                                    "function": {"name": item.name, "arguments": ""}})]
        if isinstance(item, ToolCallArguments):
            return [("tool_calls", {"index": item.index, "function": {"arguments": item.text}})]
        if not isinstance(item, TextEvent):
            return []
        if item.kind == REASONING:  # only chat splits reasoning; completions ask for none
            return [("reasoning_content", item.text)]
        return [("content", item.text)] if item.text else []

    async def _collect(self, first: Item, reader: ItemReader) -> Response:
        item = first
        while item is not END:  # the job's GenerationResult keeps the text; here only a failure matters
            if isinstance(item, Failure):
                raise as_api_error(item.error)
            item = await reader.next()
        await reader.job.wait_finished()
        self._note_finished(reader.job)
        result = reader.job.result
        reasoning, answer = result.reasoning, result.answer
        finish = self._finish_reason(reader.job)
        if self.kind == "text_completion":
            choice: dict[str, Any] = {"index": 0, "text": answer, "logprobs": None, "finish_reason": finish}
        else:
            calls = result.complete_calls
            message: dict[str, Any] = {"role": "assistant", "content": answer or (None if calls else "")}
            if reasoning:
                message["reasoning_content"] = reasoning
            if calls:
                message["tool_calls"] = [call.to_openai() for call in calls]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return JSONResponse(
            {"id": self.id, "object": self.kind, "created": self.created, "model": self.model_id,
             "choices": [choice], "usage": _usage(reader.job)},
            headers=self.headers,
        )

    def _finish_reason(self, job: GenerationJob) -> str:
        if job.cut_short:
            self.log["note"] = "cut short by shutdown"
            return "length"
        if job.stats is not None and job.stats.finish_reason == "tool_calls":
            self.log["note"] = f"{len(job.result.complete_calls)} tool call(s): " + ", ".join(
                call.name for call in job.result.complete_calls)[:200]
            return "tool_calls"
        return "length" if job.stats is not None and job.stats.finish_reason == "length" else "stop"

    def _note_finished(self, job: GenerationJob) -> None:
        self.log["tokens"] = job.generated_tokens
        if job.stats is not None:
            self.log["tps"] = job.stats.gen_tps

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model_id}
        if self.kind == "text_completion":
            data["object"] = "text_completion"
            data["choices"] = [] if delta is None else [
                {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
            ]
        else:
            data["object"] = "chat.completion.chunk"
            data["choices"] = [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]
        if usage is not None:
            data["usage"] = usage
        return _sse_data(data)

    async def _sse(self, first: Item, reader: ItemReader, include_usage: bool) -> AsyncIterator[bytes]:
        job = reader.job
        completed = False
        try:
            if self.kind == "chat.completion":
                yield self._chunk({"role": "assistant", "content": ""})
            batch = [first]
            while True:
                out, ended = self._render(batch)
                if out:
                    yield out
                if ended:
                    break
                batch = [await reader.next(), *reader.ready()]
            await job.wait_finished()
            self._note_finished(job)
            yield self._chunk({}, self._finish_reason(job))
            if include_usage:
                yield self._chunk(None, usage=_usage(job))
            yield b"data: [DONE]\n\n"
            completed = True
        finally:
            if not completed:
                # The client went away (or the server is shutting down): stop generating.
                job.cancel()
                reader.close()
                self.log["disconnected"] = True
                await job.wait_finished()
                self.log["tokens"] = job.generated_tokens

    def _render(self, batch: list[Item]) -> tuple[bytes, bool]:
        """SSE bytes for a batch of events, consecutive text of one field in one chunk; and END seen."""
        out: list[bytes] = []
        delta: dict[str, Any] = {}
        failure: bytes | None = None
        ended = False
        for item in batch:
            if isinstance(item, Failure):
                failure = _sse_data(as_api_error(item.error).body())
            if item is END or failure is not None:
                ended = True
                break
            for name, value in self._pieces(item):
                if delta and (name not in delta or (name == "tool_calls" and not _extends(delta["tool_calls"][-1], value))):
                    out.append(self._chunk(delta))
                    delta = {}
                if name == "tool_calls":
                    if delta:  # more arguments of the same call: one fragment
                        delta["tool_calls"][-1]["function"]["arguments"] += value["function"]["arguments"]
                    else:
                        delta["tool_calls"] = [value]
                else:
                    delta[name] = delta.get(name, "") + value
        if delta:
            out.append(self._chunk(delta))
        if failure is not None:
            out.append(failure)
        return b"".join(out), ended


def _extends(entry: dict[str, Any], value: dict[str, Any]) -> bool:
    """`value` is more arguments for the call `entry` describes (so they can share a chunk)."""
    return value["index"] == entry["index"] and "id" not in value


def _sse_data(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _usage(job: GenerationJob) -> dict[str, Any]:
    prompt = job.stats.prompt_tokens if job.stats else 0
    completion = job.generated_tokens
    reasoning = job.stats.reasoning_tokens if job.stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


