"""The event contract: what a workload may send, and why a line is rejected.

One event is one JSON object on one line (or in one datagram) with an
``event`` field naming its kind; docs/events.md and
``mlsidecar/events.schema.json`` describe every kind, and a test keeps the
schema, the docs and :mod:`mlsidecar.mapping` in agreement.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal, overload

import orjson

# Rejection reasons: the `reason` label of mlsidecar_events_rejected_total.
MALFORMED = "malformed_json"
NOT_OBJECT = "not_an_object"
MISSING_KIND = "missing_event"
UNKNOWN_KIND = "unknown_event"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_VALUE = "invalid_value"
BAD_TIMESTAMP = "bad_timestamp"
OVERSIZED = "oversized_line"
INVALID_UTF8 = "invalid_utf8"
BAD_NAME = "invalid_metric_name"
LABEL_MISMATCH = "label_mismatch"
NAME_CLASH = "metric_name_clash"
TOO_MANY_METRICS = "too_many_metrics"

REASONS = (MALFORMED, NOT_OBJECT, MISSING_KIND, UNKNOWN_KIND, MISSING_FIELD, WRONG_TYPE,
           INVALID_VALUE, BAD_TIMESTAMP, OVERSIZED, INVALID_UTF8, BAD_NAME, LABEL_MISMATCH,
           NAME_CLASH, TOO_MANY_METRICS)

# The built-in kinds, in the order docs/events.md lists them.
KINDS = ("prediction", "label", "evaluation", "drift", "feature_importance", "data_quality",
         "deployment", "training", "batch", "checkpoint", "pipeline", "queue", "freshness",
         "schema_violation", "metric")

# Label values are cut to this many characters unless limits.label_value_length says otherwise
# (passed to the Mapper and the analytics engine; never assigned here).
DEFAULT_LABEL_LENGTH = 128

# The largest value that is added up: a counter increment, a histogram observation, a record
# count. 2**53 is the last integer a double holds exactly; with every addend at most this, no
# realistic number of events can overflow a sum to infinity, so sums and the ratios made from
# them stay finite without any check on the hot path.
MAX_AMOUNT = 2.0 ** 53

# RFC 3339 date-time with a zone: the same pattern as events.schema.json.
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


# One decoded event: a JSON object.
Event = dict[str, Any]


class Rejected(Exception):
    """An event the sidecar will not map; ``reason`` is a fixed label value, ``detail`` for the log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def undecodable(exc: orjson.JSONDecodeError) -> Rejected:
    """Why a line orjson could not decode is rejected: its bytes are not UTF-8, or not JSON.

    Read from the decoder's own error, so a rejected line is parsed once."""
    msg = str(exc)
    low = msg.lower()
    return Rejected(INVALID_UTF8 if "utf-8" in low or "surrogate" in low else MALFORMED, msg)


def not_an_object(value: object) -> Rejected:
    """A line that is JSON but not an object (an array, a number, a string)."""
    return Rejected(NOT_OBJECT, f"got {type(value).__name__}")


def label(ev: Event, name: str, default: str | None = None, limit: int = DEFAULT_LABEL_LENGTH) -> str:
    """A label value from a field: strings as they are, integers as text, cut to ``limit`` characters."""
    v = ev.get(name)
    if v is None:
        if default is None:
            raise Rejected(MISSING_FIELD, f"'{name}' is required")
        return default
    t = type(v)
    if t is str:
        text: str = v
        if len(text) > limit:
            return text[:limit]
        return text
    if t is int:
        return str(v)
    raise Rejected(WRONG_TYPE, f"'{name}' must be a string, got {t.__name__}")


@overload
def number(ev: Event, name: str, *, required: Literal[True] = True, minimum: float | None = None,
           maximum: float | None = None) -> float: ...
@overload
def number(ev: Event, name: str, *, required: bool, minimum: float | None = None,
           maximum: float | None = None) -> float | None: ...
def number(ev: Event, name: str, *, required: bool = True, minimum: float | None = None,
           maximum: float | None = None) -> float | None:
    """A finite number from a field (booleans are not numbers), optionally bounded."""
    v = ev.get(name)
    if v is None:
        if required:
            raise Rejected(MISSING_FIELD, f"'{name}' is required")
        return None
    return check_number(v, name, minimum, maximum)


@overload
def amount(ev: Event, name: str, required: Literal[True] = True) -> float: ...
@overload
def amount(ev: Event, name: str, required: bool) -> float | None: ...
def amount(ev: Event, name: str, required: bool = True) -> float | None:
    """A value that is added up (a count, a duration, a counter increment): 0 to MAX_AMOUNT."""
    return number(ev, name, required=required, minimum=0, maximum=MAX_AMOUNT)


def check_number(v: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    t = type(v)
    if t is not float and t is not int:
        raise Rejected(WRONG_TYPE, f"'{name}' must be a number, got {t.__name__}")
    if t is float and not math.isfinite(v):
        raise Rejected(INVALID_VALUE, f"'{name}' must be finite")
    if minimum is not None and v < minimum:
        raise Rejected(INVALID_VALUE, f"'{name}' must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise Rejected(INVALID_VALUE, f"'{name}' must be <= {maximum}, got {v}")
    checked: float = v
    return checked


# A loss may blow up to NaN or infinity, which JSON cannot write: these strings stand for them.
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def loss_value(v: Any, name: str) -> float:
    """A loss: a number, or one of the strings "NaN", "Infinity", "-Infinity"."""
    if type(v) is str:
        x = NON_FINITE.get(v)
        if x is None:
            raise Rejected(INVALID_VALUE, f"'{name}' must be a number or \"NaN\", \"Infinity\", \"-Infinity\"")
        return x
    t = type(v)
    if t is not float and t is not int:
        raise Rejected(WRONG_TYPE, f"'{name}' must be a number, got {t.__name__}")
    loss: float = v
    return loss


def losses_field(ev: Event, name: str) -> dict[str, float] | None:
    """An optional JSON object of loss name -> loss value (see :func:`loss_value`)."""
    v = ev.get(name)
    if v is None:
        return None
    if type(v) is not dict:
        raise Rejected(WRONG_TYPE, f"'{name}' must be an object of numbers")
    return {k: loss_value(x, f"{name}.{k}") for k, x in v.items()}


@overload
def mapping_of_numbers(ev: Event, name: str, required: Literal[True] = True) -> dict[str, float]: ...
@overload
def mapping_of_numbers(ev: Event, name: str, required: bool) -> dict[str, float] | None: ...
def mapping_of_numbers(ev: Event, name: str, required: bool = True) -> dict[str, float] | None:
    """A JSON object of name -> number (losses, scores, queue sizes)."""
    v = ev.get(name)
    if v is None:
        if required:
            raise Rejected(MISSING_FIELD, f"'{name}' is required")
        return None
    if type(v) is not dict:
        raise Rejected(WRONG_TYPE, f"'{name}' must be an object of numbers")
    for k, x in v.items():
        check_number(x, f"{name}.{k}")
    numbers: dict[str, float] = v
    return numbers


def check_ts(ev: Event) -> None:
    """The optional ``ts`` of any event: a plain non-negative float passes at once (the
    common case, on the hot path), anything else gets the full check of :func:`timestamp`."""
    ts = ev.get("ts")
    if ts is not None and (type(ts) is not float or not 0.0 <= ts < 1e300):
        timestamp(ev)


def timestamp(ev: Event, name: str = "ts") -> float | None:
    """Unix seconds from a number or an RFC 3339 string; None when absent."""
    v = ev.get(name)
    if v is None:
        return None
    t = type(v)
    if t is int or t is float:
        if not math.isfinite(v) or v < 0:
            raise Rejected(BAD_TIMESTAMP, f"'{name}' must be a non-negative unix time")
        return float(v)
    if t is str:
        if not RFC3339.match(v):
            raise Rejected(BAD_TIMESTAMP, f"'{name}' is not RFC 3339 with a zone (e.g. "
                                          f"2026-11-26T07:00:00Z): {v[:40]!r}")
        try:
            return datetime.fromisoformat(v).timestamp()
        except ValueError:
            raise Rejected(BAD_TIMESTAMP, f"'{name}' is not a valid time: {v[:40]!r}") from None
    raise Rejected(BAD_TIMESTAMP, f"'{name}' must be a number or an RFC 3339 string")
