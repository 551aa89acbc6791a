"""`edgellm serve`: an OpenAI-compatible HTTP API over the loaded Engines (FastAPI on uvicorn),
and Ollama's API on the same port (/api/*, for clients that speak only Ollama's).

Requests are prepared (template, tokens, grammar) in a preparation thread, then handed to the
engine's scheduler (edgellm.runtime.batch), which one worker thread steps: every step decodes one
batch for all the slots. Beyond the slots, requests wait in the scheduler's queue; more than
slots + --queue get 503 + Retry-After. Events come back to the event loop through each job's
queue; a client that goes away cancels its job and the scheduler frees the slot at its next step.
Reasoning goes to `reasoning_content`, as DeepSeek's API and llama.cpp's server do.

The parts, as llama.cpp's tools/server splits them (and mlx-lm's server keeps its generator
apart from the HTTP handler):
  app         routes, authorisation (the HTTP side)
  intake      request bodies read (JSON, bounded, in time); prompts prepared off the event loop
  translate   request body -> SamplingParams and prompt, history fitting (no HTTP)
  ollama      Ollama's API: its routes, and a job's events as NDJSON
  ollama_translate, ollama_schemas, ollama_models
              its bodies -> SamplingParams and prompts; its request schemas; its model descriptions
  ollama_pull /api/pull and /api/delete: progress lines, the key and --allow-pull rules
  library     the disk's models (the Hugging Face cache) as serve candidates; pull, delete
  host        the engine host: load, idle unload, reload, start_job, capacity(); the only
              serve module that touches the scheduler
  models      the served models by name (aliases), one host each once loaded; loads on request
              within the memory budget, unloading the least recently used idle ones
  jobs        admission, queue, one job's events     replies     events -> JSON body or SSE
  schemas     request bodies (pydantic)              errors      OpenAI- (and Ollama-) shaped errors
  config      ServerConfig                           access_log  one log line per request, metrics
  startup     bind, key check and key file, warm-up, uvicorn and signals
  lifecycle   systemd watchdog and status; asks the host to unload when idle
"""

from edgellm.serve.app import Server, create_app
from edgellm.serve.config import ServerConfig
from edgellm.serve.library import Library, names_of
from edgellm.serve.models import Candidate
from edgellm.serve.startup import (
    allowed_hosts,
    check_bind,
    is_loopback,
    listen,
    pulls_allowed,
    read_api_key_file,
    serve,
    url_of,
    warm_up,
)

__all__ = ["Candidate", "Library", "Server", "ServerConfig", "allowed_hosts", "check_bind", "create_app", "is_loopback",
           "listen", "names_of", "pulls_allowed", "read_api_key_file", "serve", "url_of", "warm_up"]
