"""`python tests/stalling_serve.py serve ARGS`: `python -m edgellm serve ARGS` whose llama.cpp decode
hangs for good after EDGELLM_TEST_STALL_DECODE_AFTER decodes (0: the warm-up's own), so the
watchdog tests (tests/test_service_notify.py) can see a hung generation loop stop the pings.

The hook lives here, not in edgellm: the production server patches nothing.
"""

from __future__ import annotations

import os
import runpy
import threading

from edgellm.runtime.backend import LlamaBackend

STALL_ENV = "EDGELLM_TEST_STALL_DECODE_AFTER"


def install(after: int) -> None:
    """Every LlamaBackend's decode (serve has one) returns `after` times, then blocks forever."""
    decode = LlamaBackend.decode
    calls = [0]
    forever = threading.Event()

    def stalling_decode(self: LlamaBackend) -> int:
        calls[0] += 1
        if calls[0] > after:
            forever.wait()
        return decode(self)

    LlamaBackend.decode = stalling_decode  # type: ignore[method-assign]


if __name__ == "__main__":
    install(int(os.environ[STALL_ENV]))
    runpy.run_module("edgellm", run_name="__main__", alter_sys=True)
