"""Stop sequences: cut streamed answer text at the first one. Pure; no I/O.

Text arrives in pieces, and a stop sequence may be split across them ("\\n\\nUs" + "er:"), so a
possible start of one is held back until the next piece decides it, and never more.
"""

from __future__ import annotations

from edgellm.text.reasoning import held_prefix_length

MAX_STOPS = 4  # OpenAI's limit for `stop`
MAX_STOP_CHARS = 256  # longer ones are someone's mistake, and each costs a search per token


class StopFilter:
    """Feed text; get back the part before any stop sequence. `stopped` once one was found."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.stops = [stop for stop in stops if stop]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops or self.stopped:
            return "" if self.stopped else text
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        keep = max(held_prefix_length(self.buffer, stop) for stop in self.stops)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return out

    def flush(self) -> str:
        """What was held at the end of generation: it was not a stop sequence after all."""
        out, self.buffer = self.buffer, ""
        return out


def check_stops(stops: list[str] | tuple[str, ...]) -> list[str]:
    """The non-empty stop sequences, or ValueError with a one-line reason."""
    kept = [stop for stop in stops if stop]
    if len(kept) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences")
    for stop in kept:
        if len(stop) > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence is at most {MAX_STOP_CHARS} characters")
    return kept


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def unescape(text: str) -> str:
    """Backslash escapes as llama.cpp's CLI reads them (\\n, \\t, \\r, \\\\, quotes); any other
    backslash stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)
