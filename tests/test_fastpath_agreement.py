"""The vectorized JSON-lines path and the reference path agree on every input.

Hypothesis builds lines that sit on the fast path's edges: ids as strings or integers, blank
and unicode-space values, timestamps near the strict ISO shape (impossible dates, offsets,
fractions, epoch milliseconds), URLs with odd schemes, hosts and characters, lenient JSON that
only DuckDB accepts, escapes and duplicate keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from insights_link.core.batch import POSITION, ActivitySpec, process_block_reference
from insights_link.core.blocks import RawBlock
from insights_link.core.fastpath import process_jsonl_block

SPEC = ActivitySpec("WebLog", "Web", ("Signal.Session.Id",), "r1", datetime(2026, 1, 1, tzinfo=UTC))

texts = st.one_of(
    st.sampled_from(
        [
            "e1",
            "u-1",
            " ",
            "",
            "\u00a0",
            "\u2003x",
            "x\ty",
            "caf\u00e9",
            "a\\b",
            'q"uote',
            "\u0000",
            "\U0001f600",
            "0",
            "-0",
        ]
    ),
    st.text(max_size=6),
)
ints = st.one_of(st.integers(-(10**20), 10**20), st.sampled_from([0, -1, 2**63, 10**18]))
scalars = st.one_of(
    texts, ints, st.none(), st.booleans(), st.floats(allow_nan=True), st.just({"a": 1}), st.just([1])
)
timestamps = st.one_of(
    st.sampled_from(
        [
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00.123456Z",
            "2024-05-01T10:00:00.1234567Z",
            "2024-04-31T10:00:00Z",
            "2024-02-29T23:59:59+01:00",
            "2023-02-29T00:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01T24:00:00Z",
            "2024-05-01T10:00:60Z",
            "2024-05-01 10:00:00Z",
            "1899-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "2024-05-01T10:00:00+14:00",
            "2024-05-01T10:00:00+0200",
            "2024-05-01T10:00:00z",
            "2024-05-01T10:00Z",
            "2024-05-01",
            "1714557600000",
            "yesterday",
        ]
    ),
    st.integers(-(10**15), 10**15),
    st.builds(
        lambda d, h, m, z: f"2024-{d}T{h:02d}:{m:02d}:00{z}",
        st.sampled_from(["01-31", "02-29", "02-30", "04-31", "12-31", "13-01", "00-10"]),
        st.integers(0, 25),
        st.integers(0, 61),
        st.sampled_from(["Z", "+02:00", "-11:30", "", "+24:00"]),
    ),
)
uris = st.one_of(
    st.sampled_from(
        [
            "https://contoso.com/a?b=c#d",
            "HTTP://Contoso.com",
            "http://a.b:8080/x y",
            "javascript:alert(1)",
            "/relative",
            "ftp://x.y",
            "https://",
            "https://user@host/p",
            "http://[::1]/x",
            "https://h/\u00e9",
            "https://h/\x7f",
            "http:/x",
            "https://h\t/",
            "https://host.example/path_(1)",
        ]
    ),
    st.builds(
        lambda a, b: f"{a}://{b}", st.sampled_from(["http", "https", "hTtPs", "file"]), st.text(max_size=8)
    ),
)


def signal(export_id, user_id, ts, uri, action, name, session):
    return {
        "Export": {"Id": export_id},
        "User": {"Id": user_id},
        "Timestamp": ts,
        "View": {"Uri": uri},
        "Action": {"Name": action},
        "Name": name,
        "Session": {"Id": session},
    }


@st.composite
def lines(draw):
    sig = signal(
        draw(st.one_of(texts, ints, scalars)),
        draw(st.one_of(texts, ints, scalars)),
        draw(st.one_of(timestamps, scalars)),
        draw(st.one_of(uris, scalars)),
        draw(st.one_of(texts, scalars)),
        draw(st.one_of(texts, scalars)),
        draw(scalars),
    )
    for key in draw(st.lists(st.sampled_from(list(sig)), max_size=2)):
        sig.pop(key, None)
    event = {"Signal": sig}
    style = draw(
        st.sampled_from(["min", "spaced", "ascii", "trailing", "nan", "dupkey", "flat", "array", "garbage"])
    )
    if style == "min":
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    if style == "spaced":
        return json.dumps(event)
    if style == "ascii":
        return json.dumps(event, ensure_ascii=True)
    if style == "trailing":
        return json.dumps(event)[:-1] + ",}"
    if style == "nan":
        return (
            json.dumps(event)[:-1]
            + ', "X": '
            + draw(st.sampled_from(["nan", "NaN", "-Infinity", "inf"]))
            + "}"
        )
    if style == "dupkey":
        return '{"Signal": {"Export": {"Id": "first"}}, ' + json.dumps(event)[1:]
    if style == "flat":
        return json.dumps(
            {f"Signal.{k}.Id" if k in ("Export", "User") else f"Signal.{k}": v for k, v in sig.items()}
        )
    if style == "array":
        return json.dumps([event])
    return draw(st.sampled_from(["not json", "{", "{}", "null", '"s"', '{"Signal": null}']))


def _block(raw_lines):
    payloads = [line.encode("utf-8", errors="surrogatepass") for line in raw_lines]
    return RawBlock("mem.jsonl", 0, 0, "jsonl", list(range(1, len(payloads) + 1)), payloads)


def _canonical(result):
    table = result.table.sort_by(POSITION)
    dead = sorted((d["position"], d["reason"], d["detail"], d["payload"]) for d in result.dead_letters)
    return table, dead, result.records_read


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), min_size=1, max_size=40))
@example(
    [
        '{"Signal": {"Export": {"Id": "a"}, "User": {"Id": 1}, "Timestamp": 1714557600000, '
        '"View": {"Uri": "https://a.b"}, "Action": {"Name": "x"}}}'
    ]
)
@example(
    [
        '{"Signal": {"Export": {"Id": "\\ud800"}, "User": {"Id": "u"}, "Timestamp": "2024-05-01T10:00:00Z", '
        '"View": {"Uri": "https://a.b"}, "Action": {"Name": "x"}}}'
    ]
)
def test_fast_and_reference_paths_agree(raw_lines):
    block = _block(raw_lines)
    fast_table, fast_dead, fast_read = _canonical(process_jsonl_block(block, SPEC))
    ref_table, ref_dead, ref_read = _canonical(process_block_reference(block, SPEC))
    assert fast_read == ref_read == len(raw_lines)
    assert fast_dead == ref_dead
    assert fast_table.schema == ref_table.schema
    assert fast_table.to_pylist() == ref_table.to_pylist()


def test_invalid_utf8_line_agrees():
    good = json.dumps({"Signal": signal("a", "u", "2024-05-01T10:00:00Z", "https://a.b", "x", None, None)})
    block = RawBlock("mem.jsonl", 0, 0, "jsonl", [1, 2], [good.encode(), b'{"Signal": "\xff"}'])
    fast = process_jsonl_block(block, SPEC)
    ref = process_block_reference(block, SPEC)
    assert _canonical(fast)[1] == _canonical(ref)[1]
    assert fast.table.num_rows == 1 and isinstance(fast.table, pa.Table)


@st.composite
def mostly_valid_lines(draw):
    """Lines that are usually valid, so the fast path's accept side gets exercised too."""
    ident = st.one_of(
        st.from_regex(r"[A-Za-z0-9\-]{1,12}", fullmatch=True),
        st.integers(0, 10**12),
        st.sampled_from(["caf\u00e9", "a b", " x ", "\u00a0y"]),
    )
    ts = st.one_of(
        st.datetimes(min_value=datetime(1850, 1, 1), max_value=datetime(3100, 1, 1)).map(
            lambda d: d.isoformat(timespec="microseconds") + "Z"
        ),
        st.datetimes(min_value=datetime(1850, 1, 1), max_value=datetime(3100, 1, 1)).map(
            lambda d: d.isoformat(timespec="seconds") + "+05:30"
        ),
        st.integers(-3 * 10**12, 4 * 10**13),
    )
    uri = st.one_of(
        st.from_regex(r"https?://[a-z0-9.\-]{1,10}(:[0-9]{1,5})?(/[!-~]{0,10})?", fullmatch=True),
        st.sampled_from(["https://h/\u00e9", "http://a.b/x y"]),
    )
    sig = signal(
        draw(ident),
        draw(ident),
        draw(ts),
        draw(uri),
        draw(ident),
        draw(st.one_of(st.none(), ident)),
        draw(st.one_of(st.none(), ident, st.just({"x": 1}))),
    )
    return json.dumps({"Signal": sig}, ensure_ascii=draw(st.booleans()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mostly_valid_lines(), min_size=1, max_size=40))
def test_paths_agree_on_mostly_valid_input(raw_lines):
    block = _block(raw_lines)
    assert (
        _canonical(process_jsonl_block(block, SPEC))[1:]
        == _canonical(process_block_reference(block, SPEC))[1:]
    )
    assert (
        _canonical(process_jsonl_block(block, SPEC))[0].to_pylist()
        == _canonical(process_block_reference(block, SPEC))[0].to_pylist()
    )


def test_fast_path_takes_plainly_valid_lines():
    from insights_link.core.fastpath import vectorized_check

    good = json.dumps(
        {"Signal": signal("a", 7, "2024-05-01T10:00:00.5+02:00", "https://a.b/c?d=e", "x", "N", "s")}
    )
    assert vectorized_check(_block([good, "nope"]), SPEC)["i"].to_pylist() == [0]


# ---------------------------------------------------------------------------------------------
# Byte-level hostile lines: the fast path's gate (no backslash, no flat dotted key, valid UTF-8)
# must send every such line to the reference path, and the whole BlockResult must be identical.

SPEC_FILTERED = ActivitySpec(
    "WebLog",
    "Web",
    ("Signal.Session.Id", "Signal.Device"),
    "r2",
    datetime(2026, 1, 1, tzinfo=UTC),
    event_names=("view", "7"),
)

_VALID_SIGNAL = {
    "Export": {"Id": "e-1"},
    "User": {"Id": "u-1"},
    "Timestamp": "2024-05-01T10:00:00.25Z",
    "View": {"Uri": "https://contoso.com/p?q=1"},
    "Action": {"Name": "click"},
    "Name": "view",
    "Session": {"Id": "s-1"},
}
# values a field can be swapped for: escapes, unicode, huge and odd numbers, nested nulls
_ODD_VALUES = [
    "caf\u00e9",
    "\U0001f600",
    "a\\b",
    'q"uote',
    "tab\there",
    "\u2028",
    "https:\\/\\/contoso.com\\/x",
    10**30,
    -(10**25),
    2**63,
    1e300,
    -0.0,
    1.5,
    0,
    True,
    None,
    {"Id": None},
    {"Id": {"Id": None}},
    [],
    [None],
    {},
    "1714557600000",
    1714557600000,
    253402300800000,
    "2024-05-01T10:00:00.1234567+00:00",
]
# raw JSON snippets Python's encoder never writes: escapes of every kind, big literals
_RAW_VALUES = [
    '"\\u00e9t\\u00e9"',
    '"\\ud83d\\ude00"',
    '"\\ud800"',
    '"\\udc00x"',
    '"\\/"',
    '"a\\u0000b"',
    '"\\"quoted\\""',
    "1e999",
    "-1e999",
    "123456789012345678901234567890",
    "1.0",
    "-0",
    "0e0",
    "null",
]
_FIELDS = ["Export", "User", "Timestamp", "View", "Action", "Name", "Session"]


def _set(sig: dict, field: str, value) -> None:
    if field in ("Export", "User", "View", "Action", "Session"):
        key = "Uri" if field == "View" else "Name" if field == "Action" else "Id"
        sig[field] = value if isinstance(value, dict) and field == "Session" else {key: value}
    else:
        sig[field] = value


@st.composite
def hostile_lines(draw) -> bytes:
    """One JSON line as bytes: a valid event with a few fields swapped for odd values, written
    nested, flat, mixed, with duplicate keys, raw escapes or broken UTF-8."""
    sig = json.loads(json.dumps(_VALID_SIGNAL))
    for field in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        _set(sig, field, draw(st.sampled_from(_ODD_VALUES)))
    if draw(st.booleans()):
        sig["Device"] = draw(st.sampled_from([{"Type": "desktop"}, None, [1, {"a": None}], "x"]))
    deep = draw(st.sampled_from([0] * 6 + [40, 255, 257, 1200, 5000]))
    if deep:  # nesting Python's json gives up on (about 1000 levels less the caller's stack)
        sig["Deep"] = "@@DEEP@@"
    shape = draw(st.sampled_from(["nested", "flat", "mixed", "dupkey", "raw", "spaced", "ascii"]))
    if shape == "flat":
        text = json.dumps({f"Signal.{k}": v for k, v in sig.items()})
    elif shape == "mixed":
        flat_field = draw(st.sampled_from(_FIELDS))
        flat_key = f"Signal.{flat_field}" + ("" if flat_field in ("Timestamp", "Name") else ".Id")
        text = json.dumps({flat_key: draw(st.sampled_from(_ODD_VALUES + ["e-2"])), "Signal": sig})
    elif shape == "dupkey":
        dup = draw(st.sampled_from(_FIELDS))
        inner = json.dumps(sig, separators=(",", ":"))
        text = (
            '{"Signal":{"'
            + dup
            + '":'
            + json.dumps(draw(st.sampled_from(_ODD_VALUES)))
            + ","
            + inner[1:]
            + "}"
        )
    elif shape == "raw":
        field = draw(st.sampled_from(_FIELDS))
        _set(sig, field, "@@RAW@@")
        text = json.dumps({"Signal": sig}, separators=(",", ":"), ensure_ascii=False)
        text = text.replace('"@@RAW@@"', draw(st.sampled_from(_RAW_VALUES)))
    elif shape == "spaced":
        text = json.dumps({"Signal": sig}, indent=draw(st.sampled_from([None, 1])), ensure_ascii=False)
        text = text.replace("\n", draw(st.sampled_from([" ", "\t", "\r", ""])))
    else:
        text = json.dumps({"Signal": sig}, separators=(",", ":"), ensure_ascii=shape == "ascii")
    text = text.replace('"@@DEEP@@"', "[" * deep + "]" * deep)
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.integers(0, 5)) == 0:  # broken UTF-8 somewhere in the line
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82"])) + data[at:]
    return data


def _everything(result) -> tuple:
    """Every observable part of a BlockResult, independent of row order."""
    table = result.table.sort_by(POSITION)
    dead = sorted(json.dumps(d, sort_keys=True) for d in result.dead_letters)
    return (
        table.schema,
        table.to_pylist(),
        dead,
        result.records_read,
        result.filtered_out,
        result.outside_window,
        result.present,
        result.names,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_lines(), min_size=1, max_size=30), st.sampled_from([SPEC, SPEC_FILTERED]))
@example([json.dumps({"Signal": _VALID_SIGNAL}).encode()], SPEC_FILTERED)
@example([b'{"Signal.Export.Id": "flat", ' + json.dumps({"Signal": _VALID_SIGNAL}).encode()[1:]], SPEC)
@example([json.dumps({"Signal": _VALID_SIGNAL}).encode().replace(b"e-1", b"e\\u002d1")], SPEC)
def test_whole_results_agree_on_hostile_bytes(payloads, spec):
    block = RawBlock("mem.jsonl", 3, 0, "jsonl", list(range(1, len(payloads) + 1)), payloads)
    assert _everything(process_jsonl_block(block, spec)) == _everything(process_block_reference(block, spec))


def test_deeply_nested_lines_agree():
    """A valid event with an extra value nested 5000 deep: the reference path rejects it as
    malformed (Python's json stops about 1000 levels down) and the fast path took it, so one
    line was a row or a dead letter depending on the path. Deep lines now go to the reference
    path; lines of any length nested shallowly still take the fast path."""
    from insights_link.core.fastpath import vectorized_check

    plain = json.dumps({"Signal": _VALID_SIGNAL})[:-1]
    lines = [
        (plain + ', "X": ' + "[" * depth + "]" * depth + pad + "}").encode()
        for depth in (5000, 1200, 300, 200, 3)
        for pad in ("", ', "P": "' + "p" * 600 + '"')
    ]
    block = RawBlock("mem.jsonl", 0, 0, "jsonl", list(range(1, len(lines) + 1)), lines)
    assert _everything(process_jsonl_block(block, SPEC)) == _everything(process_block_reference(block, SPEC))
    assert vectorized_check(block, SPEC)["i"].to_pylist() == [6, 7, 8, 9]  # 200 and 3 deep
    reasons = {d["position"]: d["detail"] for d in process_jsonl_block(block, SPEC).dead_letters}
    assert set(reasons) == {1, 2, 3, 4} and all("recursion" in d for d in reasons.values())


def test_an_escaped_character_beside_deep_nesting_is_decoded_not_a_crash():
    """An escaped emoji (``json.dumps``' default ``\\ud83d\\ude00``) in a line with a value
    nested 500 deep: Python decodes it, then the lone-surrogate check recursed two frames per
    level and raised RecursionError out of the block, ending the run. Now it is a row."""
    text = json.dumps({"Signal": dict(_VALID_SIGNAL, Export={"Id": "\U0001f600"}, Deep="@@")})
    line = text.replace('"@@"', "[" * 500 + "]" * 500).encode()
    block = RawBlock("mem.jsonl", 0, 0, "jsonl", [1], [line])
    reference = process_block_reference(block, SPEC)
    assert reference.table["ActivityId"].to_pylist() == ["\U0001f600"]
    assert _everything(process_jsonl_block(block, SPEC)) == _everything(reference)


def test_a_property_named_star_is_read_by_the_reference_path():
    """``--property Signal.*`` (a key named ``*``): DuckDB reads ``*`` in a path as a wildcard
    even quoted and refused the block query (Binder Error), failing the run. Such an activity's
    blocks now take the reference path, which reads the key ``*`` literally."""
    spec = ActivitySpec("WebLog", "Web", ("Signal.*", "Signal.X.*"), "r1", datetime(2026, 1, 1, tzinfo=UTC))
    lines = [
        json.dumps({"Signal": dict(_VALID_SIGNAL, **{"*": "star", "X": {"*": "x"}})}).encode(),
        json.dumps({"Signal": _VALID_SIGNAL}).encode(),
    ]
    block = RawBlock("mem.jsonl", 0, 0, "jsonl", [1, 2], lines)
    result = process_jsonl_block(block, spec)
    assert _everything(result) == _everything(process_block_reference(block, spec))
    star_column = spec.schema().names[8]  # the first --property's column
    assert result.table.sort_by(POSITION)[star_column].to_pylist() == ["star", None]


def test_gate_leaves_escapes_and_flat_keys_to_the_reference_path():
    """Lines with a backslash or a flat ``Signal.`` key never take the fast path, valid or not."""
    from insights_link.core.fastpath import vectorized_check

    plain = json.dumps({"Signal": _VALID_SIGNAL})
    escaped = plain.replace("e-1", "e\\u002d1")
    flat = '{"Signal.Name": "view", ' + plain[1:]
    picked = vectorized_check(_block([plain, escaped, flat]), SPEC)["i"].to_pylist()
    assert picked == [0]
    block = _block([plain, escaped, flat])
    assert _everything(process_jsonl_block(block, SPEC)) == _everything(process_block_reference(block, SPEC))
    assert process_jsonl_block(block, SPEC).table.num_rows == 3


# ---------------------------------------------------------------------------------------------
# Dedupe against this run's rows of other dates (batch._drop_later_copies, made faster for
# issue 14) keeps exactly what the rule says: a row loses to an earlier copy on another date.


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 2), st.integers(0, 9)), max_size=25),
    st.lists(st.tuples(st.sampled_from("abcdefghij"), st.integers(0, 2), st.integers(0, 9)), max_size=25),
)
def test_dedupe_against_rivals_follows_the_rule(rows, rival_rows):
    from insights_link.core.batch import RANK, dedupe

    schema = SPEC.work_schema()

    def table(triples):
        base = {f.name: [None] * len(triples) for f in schema}
        base["ActivityId"] = [t[0] for t in triples]
        base[RANK] = [t[1] for t in triples]
        base[POSITION] = [t[2] for t in triples]
        return pa.Table.from_pydict(base, schema=schema)

    rivals = table(rival_rows).select(["ActivityId", RANK, POSITION])
    kept, dropped = dedupe([table(rows)], None, rivals)
    first = {}
    for ident, rank, position in sorted(rows):
        first.setdefault(ident, (rank, position))
    earliest = {}
    for ident, rank, position in rival_rows:
        earliest[ident] = min(earliest.get(ident, (rank, position)), (rank, position))
    expected = sorted(
        (ident, *key) for ident, key in first.items() if not (ident in earliest and earliest[ident] < key)
    )
    got = list(
        zip(kept["ActivityId"].to_pylist(), kept[RANK].to_pylist(), kept[POSITION].to_pylist(), strict=True)
    )
    assert got == expected
    assert dropped == len(rows) - len(expected)
