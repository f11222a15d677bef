"""The on-disk format of metric values: prometheus_client's multiprocess files.

The writer (:mod:`mlsidecar.store`), the reader (:mod:`mlsidecar.exposition`) and
the state directory (:mod:`mlsidecar.runtime.state`) all go through this module;
nothing else knows the layout.

**File names.** ``TYPE_IDENTITY.db`` for counters and histograms
(``counter_tail-0.db``), ``gauge_MODE_IDENTITY.db`` for gauges
(``gauge_mostrecent_tail-0.db``); MODE is how gauges of several processes combine
(prometheus_client's modes: ``mostrecent``, ``all``, ``liveall``, ``min``, ``max``,
``sum`` ...). The identity is a fixed worker name (or a workload's PID), the part
after the last ``_``.

**Layout** (prometheus_client.mmap_dict): a 4-byte ``used`` header (bytes in use,
header included), 4 bytes padding, then entries of ``int32 length``, the UTF-8 key
padded so that the entry ends on 8 bytes, ``double value``, ``double timestamp``.
Entries are only ever appended; a value is updated in place. The timestamp is the
last update time (unix seconds); a negative one marks a removed series.

**Keys** are the JSON text of ``[metric name, sample name, {labels}, help]``,
written as ``json.dumps(..., sort_keys=True)``. The metric name of a counter has
no ``_total`` (its samples do); a histogram stores one key per bucket (its ``le``
label is the bound spelled as prometheus_client spells it, ending with ``+Inf``)
and one for ``_sum``; ``_count`` is the ``+Inf`` bucket, never stored.

**Corruption.** A file whose header or entries run past its end (a crash
mid-write, a foreign writer) raises :class:`CorruptFile`; :func:`scan_entries`
sorts the entries of a file into those that can be trusted and what is wrong with
the others; a file that cannot be used is kept beside as ``NAME.corrupt``
(:func:`move_aside`) and replaced by one holding the good entries (:func:`rewrite_file`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from .catalogue import Family

log = logging.getLogger(__name__)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
HEADER = 8  # bytes before the first entry
SUFFIX = ".db"
CORRUPT = ".corrupt"
_INT = struct.Struct("i")
_TWO_DOUBLES = struct.Struct("dd")
_MAX_FUTURE = 86400.0  # a timestamp further ahead than this is not one we wrote
_INF = math.inf
_STRINGS = frozenset({str})

Entry = tuple[str, float, float]  # key, value, timestamp
Key = tuple[str, str, dict[str, Any], str]  # metric name, sample name, labels, help


class CorruptFile(Exception):
    """A metric file whose entries run past its end (a crash mid-write, or not ours)."""


class BadKey(ValueError):
    """A key that is not ``[metric name, sample name, {labels}, help]``."""


# --- file names ---------------------------------------------------------------
def file_name(family: Family, identity: str) -> str:
    """The multiprocess file a family's series of one worker live in."""
    if family.type == GAUGE:
        return f"gauge_{family.gauge_mode}_{identity}{SUFFIX}"
    return type_file_name(family.type, identity)


def type_file_name(file_type: str, identity: str) -> str:
    """The file of counters or histograms of one identity (the archive's, for one)."""
    return f"{file_type}_{identity}{SUFFIX}"


def is_metric_file(name: str) -> bool:
    return name.endswith(SUFFIX)


def belongs_to(name: str, identity: str) -> bool:
    """Is ``name`` a metric file of ``identity``?"""
    return name.endswith(f"_{identity}{SUFFIX}")


def parse_file_name(name: str) -> tuple[str, str, str]:
    """(type, gauge mode or "", identity) of a metric file's name (a path is fine)."""
    parts = os.path.basename(name)[:-len(SUFFIX)].split("_")
    file_type = parts[0]
    mode = parts[1] if file_type == GAUGE and len(parts) > 2 else ""
    return file_type, mode, parts[-1]


def file_type_of(name: str) -> str:
    """``counter``, ``gauge`` or ``histogram``: what a metric file (name or path) holds."""
    return os.path.basename(name).split("_", 1)[0]


def identity_of(name: str) -> str:
    """The worker identity (or PID) whose metric file ``name`` (or path) is."""
    return os.path.basename(name)[:-len(SUFFIX)].split("_")[-1]


# --- names and keys -------------------------------------------------------------
def stored_name(name: str, typ: str) -> str:
    """A family's name as the keys hold it: counters without ``_total``."""
    if typ == COUNTER and name.endswith("_total"):
        return name[:-6]
    return name


def metric_name(fam: Family) -> str:
    """The family name as prometheus_client stores it: counters without ``_total``."""
    return stored_name(fam.name, fam.type)


def family_name(name: str, typ: str) -> str:
    """The family name of a metric named ``name``: a counter's ends in ``_total``."""
    if typ == COUNTER and not name.endswith("_total"):
        return name + "_total"
    return name


def bucket_bounds(family: Family) -> list[str]:
    """The ``le`` label values of a histogram, ending with +Inf (formatted once per bucket set:
    a restart asks for them once per stored histogram sample)."""
    bounds = _BOUNDS.get(family.buckets)
    if bounds is None:
        bounds = _BOUNDS[family.buckets] = [floatToGoString(b) for b in family.buckets] + ["+Inf"]
    return bounds


_BOUNDS: dict[tuple[float, ...], list[str]] = {}


def encode_key(fam: Family, sample_name: str, labels: dict[str, str]) -> str:
    """The key of one sample of ``fam``."""
    return _KEY_ENCODER.encode([metric_name(fam), sample_name, labels, fam.help])


def encode_bucket_keys(fam: Family, labels: dict[str, str]) -> list[str]:
    """The keys of one histogram series' buckets, in :func:`bucket_bounds` order: the key is
    encoded once and each bound put in its ``le`` (a restart makes them for every stored series)."""
    bounds = bucket_bounds(fam)
    sample = fam.name + "_bucket"
    template = encode_key(fam, sample, {**labels, "le": _LE_MARK})
    head, found, tail = template.partition(_LE_TEXT)
    if not found or _LE_MARK in head or _LE_MARK in tail:  # a label value holds the mark itself
        return [encode_key(fam, sample, {**labels, "le": le}) for le in bounds]
    # A bound's text (digits, ".", "e", "+", "-", "Inf") needs no JSON escaping.
    return [f'{head}"le": "{le}"{tail}' for le in bounds]


_LE_MARK = "mlsidecar-le-bound"
_LE_TEXT = f'"le": "{_LE_MARK}"'


def encode_raw_key(name: str, sample_name: str, labels: dict[str, str], help_text: str) -> str:
    """A key from its parts (``name`` as stored: counters without ``_total``)."""
    return _KEY_ENCODER.encode([name, sample_name, labels, help_text])


# json.dumps(..., sort_keys=True) exactly (prometheus_client's key format), without building an
# encoder per call: a restart with 100k series makes one key per stored sample.
_KEY_ENCODER = json.JSONEncoder(sort_keys=True)


# The parts [name, sample, labels, help] of a key this module wrote, or that scan_entries
# accepted: unchecked, orjson itself (several times json's speed; a restart decodes every key).
decode_key = orjson.loads


def parse_key(raw: str | bytes, strict: bool = False) -> Key:
    """The parts of a key from any writer, checked; raises :class:`BadKey`.

    Label values may be numbers (another client's writer); ``strict``: only strings,
    as every key this module writes.
    """
    try:
        key = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadKey(f"not JSON ({exc})") from None
    # Checked inline: the server parses every key of a foreign directory once, at its first scrape.
    if type(key) is list and len(key) == 4:
        name, sample, labels, help_text = key
        if (type(name) is str and type(sample) is str and type(labels) is dict and type(help_text) is str
                and (_STRINGS if strict else _ANY_WRITER).issuperset(map(type, labels.values()))):
            return name, sample, labels, help_text
    raise BadKey("not a [name, sample, {labels}, help] list of strings")


_ANY_WRITER = frozenset({str, int, float})


# --- entries --------------------------------------------------------------------
def read_used(buf: Any) -> int:
    """The ``used`` header of a file's bytes (or its map)."""
    (used,) = _INT.unpack_from(buf, 0)
    return int(used)


def iter_raw_entries(buf: Any, start: int, used: int) -> Iterator[tuple[bytes, int]]:
    """(key bytes, offset of the value) for the entries in ``buf[start:used]``: the one place
    that walks the entry layout (length, key, padding, value, timestamp).

    The keys stay bytes: one that is not UTF-8 or not JSON is the caller's to skip, and the
    entries after it are still read.
    """
    pos = start
    while pos < used:
        if pos + 4 > used:
            raise CorruptFile(f"entry header at {pos} runs past {used}")
        (length,) = _INT.unpack_from(buf, pos)
        padded = length + (8 - (length + 4) % 8)
        end = pos + 4 + padded + 16
        if length <= 0 or end > used:
            raise CorruptFile(f"entry at {pos} of length {length} runs past {used}")
        yield bytes(buf[pos + 4:pos + 4 + length]), pos + 4 + padded
        pos = end


def iter_entries(buf: Any, start: int, used: int) -> Iterator[tuple[str, int]]:
    """Yield (key, offset of the value) for the entries in ``buf[start:used]``."""
    for key, off in iter_raw_entries(buf, start, used):
        yield key.decode("utf-8"), off


def entry_size(key: str) -> int:
    """Bytes one new entry of ``key`` takes in a file."""
    n = len(key.encode())
    return 4 + n + (8 - (n + 4) % 8) + 16


def read_file(path: str) -> Iterator[Entry]:
    """(key, value, timestamp) of every entry of a file; :class:`CorruptFile` if its header lies."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < HEADER:
        return
    used = read_used(data)
    if used > len(data):
        raise CorruptFile(f"header says {used} bytes used, file has {len(data)}")
    for key, off in iter_entries(data, HEADER, used):
        v, ts = _TWO_DOUBLES.unpack_from(data, off)
        yield key, v, ts


def scan_entries(data: bytes, file_type: str, now: float,
                 parsed: list[list[Any]] | None = None) -> tuple[list[Entry], list[str]]:
    """The entries of a metric file that can be trusted, and what is wrong with the others.

    A key must be the JSON prometheus_client writes; a value must be finite, and for counters
    and histograms not negative; a timestamp is -1 (removed), or between 0 and now + 1 day.
    A bit flipped in a value is found when it breaks one of these, not always.

    ``parsed``, when given, gets the parts ``[name, sample, {labels}, help]`` of each good
    entry's key, in the same order: a restart reads every key once, not once per use.
    """
    problems: list[str] = []
    good: list[Entry] = []
    if len(data) < HEADER:
        return good, ([] if not data else ["shorter than its header"])
    used = read_used(data)
    if used == 0:
        return good, ["header zeroed (all values lost)"]
    if used < HEADER or used > len(data):
        return good, [f"header says {used} bytes used, file has {len(data)}"]
    # Locals: a restart checks every entry of every file.
    loads, unpack_int, unpack_doubles = orjson.loads, _INT.unpack_from, _TWO_DOUBLES.unpack_from
    counted = file_type != GAUGE
    latest = now + _MAX_FUTURE
    keep = good.append
    keep_parts = parsed.append if parsed is not None else None
    pos = HEADER
    while pos < used:
        if pos + 4 > used:
            problems.append(f"entry header at {pos} runs past {used}")
            break
        (length,) = unpack_int(data, pos)
        padded = length + (8 - (length + 4) % 8)
        end = pos + 4 + padded + 16
        if length <= 0 or end > used:
            problems.append(f"entry at {pos} of length {length} runs past {used}")
            break
        raw = data[pos + 4:pos + 4 + length]
        value, ts = unpack_doubles(data, pos + 4 + padded)
        pos = end
        try:
            key = raw.decode("utf-8")
            parts = loads(key)
            # Checked inline; JSON object keys are always strings, label values must be too.
            if not (type(parts) is list and len(parts) == 4 and type(parts[0]) is str
                    and type(parts[1]) is str and type(parts[2]) is dict and type(parts[3]) is str
                    and _STRINGS.issuperset(map(type, parts[2].values()))):
                raise ValueError("not a series key")
        except ValueError as exc:  # UnicodeDecodeError and orjson's JSONDecodeError too
            problems.append(f"bad key {raw[:60]!r} ({type(exc).__name__})")
            continue
        # A gauge may be NaN or infinite (a comparison not computable yet, a NaN loss); a counter
        # or histogram value may not, nor be negative (NaN fails every comparison).
        if counted and not 0.0 <= value < _INF:
            problems.append(f"impossible value {value!r} for {parts[0]}")
            continue
        if not (ts == -1.0 or 0.0 <= ts <= latest):
            problems.append(f"impossible timestamp {ts!r} for {parts[0]}")
            continue
        keep((key, value, ts))
        if keep_parts is not None:
            keep_parts(parts)
    return good, problems


def is_readable(path: str, now: float) -> bool:
    """Can the file be served, and is every entry one we could have written?"""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        _good, problems = scan_entries(data, file_type_of(path), now)
        return not problems and len(data) >= HEADER
    except Exception:  # noqa: BLE001 - any failure means we cannot serve it
        return False


# --- replacing and keeping files -------------------------------------------------------
def rewrite_file(path: str, entries: list[Entry]) -> None:
    """Replace a metric file, atomically, by one holding ``entries``."""
    tmp = path + ".compact"
    remove(tmp)
    fresh = MmapedDict(tmp)
    try:
        for key, value, ts in entries:
            fresh.write_value(key, value, ts)
    finally:
        fresh.close()
    os.replace(tmp, path)


def move_aside(path: str, copy: bool = False) -> str:
    """Keep a file we cannot use as ``path.corrupt`` (``.corrupt.N`` if that is taken)."""
    aside = path + CORRUPT
    n = 1
    while os.path.lexists(aside):
        aside = f"{path}{CORRUPT}.{n}"
        n += 1
    if copy:
        shutil.copyfile(path, aside)
    else:
        os.replace(path, aside)
    return aside


def remove(path: str) -> None:
    """Remove a file (or a directory in its place); one already gone is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
