"""Text safety: the one place that decides what amldbg may write or print.

Every writer (the driver-log lines of a dump, ``stacks-*.json``, ``crash-*.json``, warnings)
and every reader that prints what it read back (``amldbg stacks``, ``amldbg find``,
``amldbg doctor``) goes through these functions, so that the rules cannot drift apart:

* :func:`mask` hides credentials (:mod:`amldbg.core.secrets`): by value shape, and by name in
  ``name='value'``, ``name="value"`` and ``"name": "value"`` text;
* :func:`escape` makes text one safe line: C0 and C1 controls (tabs and line breaks too),
  DEL, the bidirectional overrides and isolates, zero-width characters, the line and
  paragraph separators, a byte-order mark and lone surrogates become visible escapes
  (``\\x1b``, ``\\u202e``), so nothing read from a log can move the cursor, retitle a
  terminal, reorder what is shown or forge a line of its own;
* :func:`shorten` cuts to a length without splitting an escape;
* :func:`safe` does all three, in the only safe order: mask, then escape, then cut (a
  secret cut in half is no longer recognisable, so it would be written in clear).

Only the standard library is used; nothing here calls code of the objects it is given
beyond ``str()`` of a ``str`` subclass's base.
"""

from __future__ import annotations

import re

from amldbg.core import secrets

__all__ = ["MASK", "escape", "mask", "safe", "shorten"]

MASK = secrets.MASK

# What must never reach a terminal or a log line raw: C0 controls (ESC starts CSI, OSC and DCS
# sequences), DEL, C1 controls (U+0080..U+009F, single-character CSI/OSC/DCS; U+0085 is a line
# break), zero-width and direction marks, the line and paragraph separators, the bidirectional
# embeddings, overrides and isolates, the byte-order mark and lone surrogates (from JSON
# "\ud800" or undecodable file names), which cannot even be encoded for output.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
# An escape written by :func:`escape`: a cut must not fall inside one.
_ESCAPED = re.compile(r"\\x[0-9a-f]{2}|\\u[0-9a-f]{4}")


def _escape_one(found: re.Match[str]) -> str:
    code = ord(found.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _text(value: object) -> str:
    # str() of a str subclass could run its __str__; its base's data needs no call.
    if isinstance(value, str):
        return str.__str__(value) if type(value) is not str else value
    return str(value)


def escape(text: object) -> str:
    """``text`` as one safe line: every control, bidi and line-separator character written
    as a visible escape (``"\\x1b]0;owned\\x07"`` stays text instead of retitling a terminal)."""
    return _UNSAFE.sub(_escape_one, _text(text))


def mask(text: object) -> str:
    """``text`` with every part that looks like a credential replaced by :data:`MASK`
    (:func:`amldbg.core.secrets.mask_value`). Never raises: text that cannot be masked is
    withheld whole."""
    try:
        return secrets.mask_value(_text(text))
    except Exception:  # parsing hostile text: what cannot be masked is withheld, not shown
        return MASK


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut, and never
    inside an escape written by :func:`escape`."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if limit <= 3:
        return text[:limit]
    cut = limit - 3
    # Back off to the start of an escape the cut would split.
    for found in _ESCAPED.finditer(text, max(0, cut - 6), cut + 6):
        if found.start() < cut < found.end():
            cut = found.start()
            break
    return text[:cut] + "..."


#: Characters past ``limit`` that :func:`safe` still masks before it cuts: a secret that
#: starts in the shown part and ends past the cut is still found, and a huge text (a
#: minified source line) costs a bounded time.
MASK_WINDOW = 4096


def safe(text: object, limit: int | None = None) -> str:
    """``text`` masked, escaped to one line and cut to ``limit`` characters: what amldbg
    writes of any value it did not make itself."""
    raw = _text(text)
    if limit is not None and len(raw) > limit + MASK_WINDOW:
        raw = raw[: limit + MASK_WINDOW]
    shown = escape(mask(raw))
    return shown if limit is None else shorten(shown, limit)
