"""Turn an error answer from Earth Engine (or from whatever stood in its way) into one line.

The body is untrusted: a JSON envelope from EE, an HTML page from a proxy or captive portal,
or garbage. The result is always a short, printable message.
"""

from __future__ import annotations

import json

MAX_MESSAGE = 300


def error_message(body: bytes, status: int, reason: str | None = None) -> str:
    """EE's own message when the body is its JSON envelope, else a description of the body."""
    text = body[:65536].decode("utf-8", errors="replace").strip()
    message = _envelope_message(text)
    if message:
        return _one_line(message)
    if _looks_like_html(text):
        title = _title(text)
        found = f" ({_one_line(title)})" if title else ""
        return (
            f"an HTML page{found} instead of an Earth Engine answer (a proxy or portal answered?)"
        )
    if text:
        return _one_line(text)
    if reason and reason.strip():
        return _one_line(reason)  # the reason phrase comes from the server too
    return f"HTTP {status}"


def _envelope_message(text: str) -> str | None:
    if not text.startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json allows
        return None
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            return message
    if isinstance(error, str) and error.strip():
        return error
    return None


def _title(text: str) -> str | None:
    """The first <title> of a page, found in linear time (a lazy regex over a body of many
    unclosed <title> tags backtracks quadratically: seconds for 64 KB)."""
    lower = text.lower()
    start = lower.find("<title")
    if start < 0:
        return None
    open_end = lower.find(">", start)
    if open_end < 0:
        return None
    close = lower.find("</title>", open_end)
    if close < 0:
        return None
    return text[open_end + 1 : close].strip() or None


def _looks_like_html(text: str) -> bool:
    head = text[:512].lstrip().lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in head


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    printable = "".join(ch if ch.isprintable() else "?" for ch in flat)
    if len(printable) > MAX_MESSAGE:
        return printable[: MAX_MESSAGE - 1] + "…"
    return printable
