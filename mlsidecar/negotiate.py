"""HTTP content negotiation for /metrics: Accept and Accept-Encoding with q-values.

A media range or coding with ``q=0`` is *not acceptable* (RFC 9110 §12.4.2),
so ``application/openmetrics-text;q=0, text/plain`` gets Prometheus text and
``gzip;q=0`` gets an uncompressed body. A more specific range outranks a
wildcard (``text/plain;q=0, */*`` refuses text). Malformed parts are ignored,
never an error: a scraper with an odd header still gets an answer.
"""

from __future__ import annotations

from collections.abc import Iterator

OPENMETRICS = "application/openmetrics-text"
TEXT = "text/plain"
# OpenMetrics versions this server writes; an unversioned range accepts them too.
OPENMETRICS_VERSIONS = frozenset({"", "1.0.0", "0.0.1"})
TEXT_VERSIONS = frozenset({"", "0.0.4"})


def _q(params: dict[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 1.0
    return q if 0.0 <= q <= 1.0 else 1.0


def _split(header: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(lower-case value, params) for each comma-separated element of a header."""
    for element in header.split(","):
        parts = [p.strip() for p in element.split(";")]
        value = parts[0].lower()
        if not value:
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            k, sep, v = p.partition("=")
            if sep:
                params[k.strip().lower()] = v.strip().strip('"')
        yield value, params


def _media_q(header: str, media: str, versions: frozenset[str]) -> float:
    """The q-value the header gives ``media``: the most specific matching range wins."""
    best_spec, best_q = -1, 0.0
    main = media.split("/")[0]
    for value, params in _split(header):
        if value == media:
            if params.get("version", "") not in versions:
                continue  # a version this server does not write
            spec = 3 if "version" in params else 2
        elif value == main + "/*":
            spec = 1
        elif value == "*/*":
            spec = 0
        else:
            continue
        if spec > best_spec:
            best_spec, best_q = spec, _q(params)
    return best_q


def choose_format(accept: str | None) -> str | None:
    """``"openmetrics"``, ``"text"``, or None when the client accepts neither.

    No Accept header means anything is acceptable: Prometheus text. On equal
    q-values OpenMetrics wins only when it was asked for by name.
    """
    if not accept or not any(True for _ in _split(accept)):
        return "text"
    om = _media_q(accept, OPENMETRICS, OPENMETRICS_VERSIONS)
    text = _media_q(accept, TEXT, TEXT_VERSIONS)
    named_om = any(v == OPENMETRICS for v, _ in _split(accept))
    if om > 0 and (om > text or (om == text and named_om)):
        return "openmetrics"
    if text > 0:
        return "text"
    return None


def wants_gzip(accept_encoding: str | None) -> bool:
    """True when gzip is acceptable (q > 0) and not ranked below ``identity``."""
    if not accept_encoding:
        return False
    gzip_q = identity_q = star_q = None
    for value, params in _split(accept_encoding):
        if value in ("gzip", "x-gzip"):
            gzip_q = _q(params) if gzip_q is None else max(gzip_q, _q(params))
        elif value == "identity":
            identity_q = _q(params)
        elif value == "*":
            star_q = _q(params)
    if gzip_q is None:
        gzip_q = star_q if star_q is not None else 0.0
    if identity_q is None:
        identity_q = star_q if star_q is not None else 0.0  # unranked: gzip, when acceptable, wins
    return gzip_q > 0 and gzip_q >= identity_q
