"""Reading the server's times: RFC 3339 strings in UTC, such as ``2026-11-26T16:00:00.123Z``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

__all__ = ["parse_time"]

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$"
)


def parse_time(value: Any) -> Optional[datetime]:
    """An aware :class:`~datetime.datetime` for an RFC 3339 string; ``None`` for ``None``.

    Any number of fraction digits is accepted (Python 3.9's ``fromisoformat`` accepts only
    3 or 6, and no ``Z``); a time without an offset is taken as UTC. Text that is not a time
    gives ``None`` rather than an exception, so one odd field never hides a whole job.
    """
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = m.group(7) or ""
    micro = int((fraction + "000000")[:6]) if fraction else 0
    if m.group(9):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(-offset if m.group(9) == "-" else offset)
    else:
        tz = timezone.utc
    try:
        # A leap second (:60) is folded into the second before it.
        return datetime(year, month, day, hour, minute, min(second, 59), micro, tzinfo=tz)
    except ValueError:
        return None
