"""How deep a JSON text nests, counted before parsing it: json.loads recurses, so a text of a
few thousand brackets is a RecursionError (a 500, or a traceback) unless refused first. Pure."""

from __future__ import annotations

import re
from itertools import accumulate

_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _DEPTH_STEP)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def max_depth(raw: bytes | str) -> int:
    """Bracket nesting outside strings, without parsing."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)  # strings first: their brackets do not count
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)
