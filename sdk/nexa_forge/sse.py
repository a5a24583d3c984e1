"""Reading a ``text/event-stream`` (server-sent events) from a binary stream.

Follows the WHATWG parsing rules that matter to a client: ``field: value`` lines, a blank
line dispatches the event, ``data`` lines join with newlines, lines starting with ``:`` are
comments (keep-alives), and an event without ``data`` is not dispatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, List, Optional

__all__ = ["ServerSentEvent", "read_events"]


@dataclass
class ServerSentEvent:
    """One dispatched event: its type (``message`` when unnamed), data and last id."""

    event: str
    data: str
    id: Optional[str] = None


def read_events(stream: BinaryIO) -> Iterator[ServerSentEvent]:
    """The events of ``stream`` until it ends. A last event without its blank line is dropped,
    as the format requires: it may have been cut off."""
    event = ""
    data: List[str] = []
    last_id: Optional[str] = None
    while True:
        raw = stream.readline()
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line.startswith("\ufeff"):
            line = line[1:]
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        # `retry` and unknown fields are ignored: reconnection is the caller's business.
