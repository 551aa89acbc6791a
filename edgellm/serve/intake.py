"""What every handler does with a request before the engine host sees it, for both APIs (OpenAI's
in app.py, Ollama's in ollama.py): read its body (JSON, bounded, in time) and prepare its prompt
(template, tokens, grammar) in a preparation thread, off the event loop and before a slot is taken."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from edgellm.errors import EdgeLLMError, GrammarError
from edgellm.runtime.protocol import GenerationEngine
from edgellm.runtime.types import Prompt, SamplingParams
from edgellm.serve import guards
from edgellm.serve.errors import APIError, ClientGone, as_api_error
from edgellm.serve.jobs import wait_watching_client

# Requests prepared at once (template, tokenizer, grammar checks): more than one, so a slow one does
# not hold up the others; few, as they share the board's cores with generation.
PREPARE_THREADS = 2
# A body has this long to arrive once its head has: a client trickling bytes holds nothing longer.
BODY_TIMEOUT_SECONDS = 30


def require_json(request: Request, *, browsers_only: bool = False) -> None:
    """POST bodies must say they are JSON: a web page can send text/plain to any site without a
    CORS preflight, so accepting it would let any page the user opens use a loopback server.

    `browsers_only` (Ollama's API): a body without the header is read as JSON too when no browser
    sent it, as `curl URL -d '{...}'` sends every example in Ollama's documentation. A browser
    sends an Origin header with every cross-site POST, so such a request still needs the header."""
    if guards.is_json_media_type(request.headers.get("content-type")):
        return
    if browsers_only and "origin" not in request.headers:
        return
    raise APIError(415, "the request body must be JSON: send the header 'Content-Type: application/json'",
                   code="unsupported_media_type")


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_TIMEOUT_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None  # left mid-body: a 499 in the log, not a 500
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {BODY_TIMEOUT_SECONDS} s", code="request_timeout") from None
    try:
        return guards.parse_json_body(b"".join(chunks))
    except guards.BodyError as exc:
        raise APIError(400, f"the request body is not acceptable: {exc}", code="invalid_json") from None


async def prompt_off_the_loop(preparer: ThreadPoolExecutor, engine: GenerationEngine, request: Request,
                             make_prompt: Callable[[], Prompt], params: SamplingParams, param: str) -> Prompt:
    """Template, tokenizer and grammar work in the preparation thread, before the generation
    slot is taken: a huge or hostile request costs its own time, not everyone's."""
    gone = threading.Event()

    def step() -> None:
        if gone.is_set():
            raise ClientGone()  # the client left: the rest of the work is not done

    def work() -> Prompt:
        step()
        text = engine.grammar_text(params)
        params.grammar, params.json_schema = text, None  # checked once; generation reuses it
        step()
        if params.tool_use is not None and params.tool_use.active:
            engine.tool_grammar(params.tool_use)  # kept on the ToolUse
            step()
        return make_prompt()

    future = asyncio.get_running_loop().run_in_executor(preparer, work)
    future.add_done_callback(lambda done: done.cancelled() or done.exception())  # an outcome nobody reads
    try:
        await wait_watching_client(future, request)
    except ClientGone:
        gone.set()  # a preparation not started is dropped; one under way stops at its next step
        future.cancel()
        raise
    try:
        return future.result()
    except GrammarError as exc:
        raise APIError(400, exc.message, param=param, code="invalid_grammar") from None
    except EdgeLLMError as exc:
        raise as_api_error(exc) from None
