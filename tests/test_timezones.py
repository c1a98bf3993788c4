"""The export is independent of the process's time zone and locale.

The same inputs (JSON lines through both the vectorized and the reference path, CSV, Avro with
string, long and timestamp logical-type timestamps) are exported by the real CLI under several
``TZ`` and ``LC_ALL``/``LANG`` values with the same run id and clock. Every run must write the
same Parquet files, rows and dead letters, and every ActivityTime must equal what Python's
``datetime`` computes in UTC. Issue #8: under ``TZ=Asia/Tokyo`` DuckDB's ICU cast moved epoch
milliseconds given as JSON numbers by 9 hours.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import duckdb
import fastavro
import pytest

from conftest import (
    dead_letters,
    event,
    manifest_locations,
    parquet_files,
    read_activities,
    signal_avro_schema,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TZS = ["UTC", "Asia/Tokyo", "America/New_York", "Australia/Lord_Howe", "Pacific/Kiritimati"]
LOCALES = ["C", "C.UTF-8", "POSIX", "en_US.UTF-8", "de_DE.UTF-8", "tr_TR.UTF-8", "ja_JP.UTF-8"]
RUN = ("--run-time", "2026-01-01T00:00:00Z", "--run-id", "r1")


def _ms(*args) -> int:
    """Epoch milliseconds of a UTC wall time."""
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


# Instants near UTC midnight, near midnight in the matrix's zones, and at DST transitions.
MS = {
    "midnight_minus": _ms(2024, 4, 30, 23, 59, 59, 999_000),
    "midnight": _ms(2024, 5, 1),
    "tokyo_midnight_minus": _ms(2024, 5, 1, 14, 59, 59, 999_000),  # 23:59:59.999 in Tokyo
    "kiritimati_midnight": _ms(2024, 5, 1, 10),  # 00:00 on 2 May at UTC+14
    "ny_dst_gap": _ms(2024, 3, 10, 7, 30),  # 2024-03-10 02:30 wall time does not exist in New York
    "eu_dst_gap": _ms(2024, 3, 31, 1, 30),  # 2024-03-31 02:30 CET does not exist in Europe
    "lord_howe_gap": _ms(2024, 10, 5, 15, 45),  # Lord Howe moves by 30 minutes on 2024-10-06 02:00
    "before_epoch": -1,
    "new_year": _ms(2024, 12, 31, 23, 59, 59, 999_000),
}
ISO = [
    "2024-05-01T23:59:59.999999Z",
    "2024-05-01T00:00:00Z",
    "2024-03-10T02:30:00-05:00",
    "2024-11-03T01:30:00-04:00",  # New York's repeated hour, first pass
    "2024-05-02T00:30:00+09:00",  # the previous UTC date
    "2024-05-01T23:30:00-10:00",  # the next UTC date
    "2024-05-01T10:00:00+14:00",
    "2024-03-31T02:30:00+01:00",
    "2024-10-27T02:30:00+02:00",
    "2024-10-06T02:15:00+10:30",
    "2024-05-01T10:00:00.5+05:45",
    "2024-05-01T10:00:00+0530",  # compact offset: reference path
    "2024-03-10T02:30:00",  # no zone means UTC, also where the wall time does not exist locally
    "2024-11-03T01:30:00",  # ... or exists twice
    "2024-03-31T02:30:00",
    "2024-10-27T02:30:00",
    "2024-10-06T02:15:00",
    "2024-05-01T23:59",
]
BAD_TIMESTAMPS = ["2024-04-31T00:00:00Z", "2024-03-10 02:30", "1714521599999.5", "Tue, 10 Mar 2024 02:30"]


def expected_time(value) -> datetime:
    """ActivityTime by Python's own rules in UTC: the oracle the runs are held to."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, int) or value.lstrip("-").isdigit():
        return EPOCH + timedelta(milliseconds=int(value))
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _cases() -> dict[str, dict[str, object]]:
    """{format: {ActivityId: timestamp value}} for the valid records of each input."""
    jsonl: dict[str, object] = {}
    for key, ms in MS.items():
        jsonl[f"j-num-{key}"] = ms  # a JSON number: the vectorized path
        jsonl[f"j-str-{key}"] = str(ms)
    for k, text in enumerate(ISO):
        jsonl[f"j-iso-{k}"] = text
    csv_cases = {f"c-str-{key}": str(ms) for key, ms in MS.items()} | {
        f"c-iso-{k}": t for k, t in enumerate(ISO)
    }
    avro = {f"a-long-{key}": ms for key, ms in MS.items()} | {f"a-iso-{k}": t for k, t in enumerate(ISO)}
    avro_logical = {f"t-{key}": EPOCH + timedelta(milliseconds=ms) for key, ms in MS.items()}
    return {"jsonl": jsonl, "csv": csv_cases, "avro": avro, "avro_logical": avro_logical}


CASES = _cases()
FLAT = {"f-num-midnight_minus": MS["midnight_minus"]}  # flat form: the reference path
EXPECTED = {aid: expected_time(v) for group in [*CASES.values(), FLAT] for aid, v in group.items()}


def _signal_schema(timestamp_type) -> dict:
    return signal_avro_schema(timestamp_type)


def _write_inputs(folder) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps(event(aid, ts=ts)) for aid, ts in CASES["jsonl"].items()]
    lines += [
        json.dumps(
            {
                "Signal.Export.Id": aid,
                "Signal.User.Id": "u1",
                "Signal.Timestamp": ts,
                "Signal.View.Uri": "https://contoso.com/f",
                "Signal.Action.Name": "Flat",
            }
        )
        for aid, ts in FLAT.items()
    ]
    lines += [json.dumps(event(f"j-bad-{k}", ts=ts)) for k, ts in enumerate(BAD_TIMESTAMPS)]
    lines.append(json.dumps(event("j-bad-float", ts=1714521599999.5)))
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["Signal.Export.Id", "Signal.User.Id", "Signal.Timestamp", "Signal.View.Uri", "Signal.Action.Name"]
    )
    for aid, ts in [*CASES["csv"].items(), *((f"c-bad-{k}", t) for k, t in enumerate(BAD_TIMESTAMPS))]:
        writer.writerow([aid, "u1", ts, "https://contoso.com/c", "Click"])
    (folder / "events.csv").write_text(buf.getvalue(), encoding="utf-8")

    def nested(aid, ts):
        return dict(event(aid, ts=ts), Signal=dict(event(aid, ts=ts)["Signal"], Name="AvroEvent"))

    with open(folder / "events.avro", "wb") as f:
        fastavro.writer(
            f,
            fastavro.parse_schema(_signal_schema(["string", "long"])),
            [nested(aid, ts) for aid, ts in CASES["avro"].items()]
            + [nested(f"a-bad-{k}", t) for k, t in enumerate(BAD_TIMESTAMPS)],
        )
    with open(folder / "logical.avro", "wb") as f:
        fastavro.writer(
            f,
            fastavro.parse_schema(_signal_schema({"type": "long", "logicalType": "timestamp-millis"})),
            [nested(aid, ts) for aid, ts in CASES["avro_logical"].items()],
        )


def _locale_available(name: str) -> bool:
    """Whether the C library has this locale (the CLI would otherwise silently run in C)."""
    probe = "import locale, sys; locale.setlocale(locale.LC_ALL, ''); sys.exit(0)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")} | {"LC_ALL": name}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


def _environments() -> list[tuple[str, dict[str, str]]]:
    """(label, env overrides): every zone with a UTF-8 C locale, then each available locale
    under a non-UTC zone, through LC_ALL and through LANG alone."""
    envs = [(f"TZ={tz}", {"TZ": tz, "LC_ALL": "C.UTF-8"}) for tz in TZS]
    for name in (n for n in LOCALES if _locale_available(n)):
        envs.append((f"TZ=Asia/Tokyo LC_ALL={name}", {"TZ": "Asia/Tokyo", "LC_ALL": name}))
        envs.append(
            (f"TZ=America/New_York LANG={name}", {"TZ": "America/New_York", "LANG": name, "LC_ALL": None})
        )
    return envs


def _snapshot(ds):
    """What a run produced: Parquet names, rows (sorted by ActivityId) and dead letters."""
    rows = read_activities(ds).to_pylist()
    dead = sorted(dead_letters(ds), key=lambda d: json.dumps(d, sort_keys=True))
    return parquet_files(ds), rows, dead


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One export of the same inputs per environment: {label: (data-source folder, snapshot)}."""
    root = tmp_path_factory.mktemp("tz")
    _write_inputs(root / "in")
    out = {}
    for label, overrides in _environments():
        env = {k: v for k, v in os.environ.items() if k not in overrides and k != "LC_ALL"}
        env |= {k: v for k, v in overrides.items() if v is not None}
        lake = root / f"lake{len(out)}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "insights_link.cli",
                "export",
                "--input",
                str(root / "in"),
                "--output",
                str(lake),
                *RUN,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, (label, proc.stderr[-2000:])
        ds = lake / "EngagementInsights"
        out[label] = (ds, _snapshot(ds))
    return out


def test_the_matrix_really_changes_the_local_zone():
    """Guard: each TZ reaches the C library and DuckDB (else the matrix would prove nothing)."""
    probe = (
        "import time, duckdb; print(time.strftime('%z', time.localtime(1714557600)), "
        "duckdb.connect().sql(\"select current_setting('TimeZone')\").fetchall()[0][0])"
    )
    for tz, offset in [
        ("Asia/Tokyo", "+0900"),
        ("America/New_York", "-0400"),
        ("Australia/Lord_Howe", "+1030"),
        ("Pacific/Kiritimati", "+1400"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-c", probe],
            env=dict(os.environ, TZ=tz),
            capture_output=True,
            text=True,
            check=True,
        )
        assert proc.stdout.split() == [offset, tz]


def test_every_zone_and_locale_writes_the_same_lake(runs):
    labels = list(runs)
    assert len(labels) >= len(TZS) + 2  # every zone, plus at least one locale variant (C is always there)
    _, (files, rows, dead) = runs["TZ=UTC"]
    assert len(rows) == len(EXPECTED)
    assert len(dead) == 3 * len(BAD_TIMESTAMPS) + 1
    for label in labels[1:]:
        other_files, other_rows, other_dead = runs[label][1]
        assert other_files == files, label
        assert other_rows == rows, label
        assert other_dead == dead, label


def test_activity_times_are_the_utc_instants_python_computes(runs):
    """Every row in every run: ActivityTime is the instant Python's datetime gives in UTC, and
    the row sits in the file of that UTC date."""
    for label, (ds, (_, rows, _)) in runs.items():
        got = {r["ActivityId"]: r["ActivityTime"] for r in rows}
        assert got == EXPECTED, label
        for location in manifest_locations(ds):
            day = location.split("_")[1]  # WebLog_yyyymmdd_<run>_nnn.parquet
            in_file = duckdb.sql(f"select ActivityId from read_parquet('{ds / location}')").fetchall()
            assert {EXPECTED[aid].strftime("%Y%m%d") for (aid,) in in_file} == {day}, (label, location)


def test_a_known_epoch_millisecond_value_lands_on_its_utc_date(runs):
    """1714521599999 ms is 2024-04-30 23:59:59.999 UTC (08:59 on 1 May in Tokyo): it must stay on
    30 April, as a JSON number, a JSON string, a CSV cell and an Avro long."""
    expected = datetime(2024, 4, 30, 23, 59, 59, 999_000, tzinfo=UTC)
    assert EPOCH + timedelta(milliseconds=1714521599999) == expected
    for label, (_, (files, rows, _)) in runs.items():
        by_id = {r["ActivityId"]: r["ActivityTime"] for r in rows}
        for aid in (
            "j-num-midnight_minus",
            "j-str-midnight_minus",
            "c-str-midnight_minus",
            "a-long-midnight_minus",
            "t-midnight_minus",
            "f-num-midnight_minus",
        ):
            assert by_id[aid] == expected, (label, aid)
        assert any("/2024/04/30/WebLog_20240430_r1_" in f for f in files), label


@pytest.mark.parametrize("session_zone", ["Asia/Tokyo", "Pacific/Kiritimati", "America/New_York"])
def test_duckdb_in_another_zone_reads_the_same_utc_instants(runs, session_zone):
    """The Parquet column is UTC-adjusted: DuckDB in a non-UTC session reads a TIMESTAMPTZ whose
    UTC value is what was exported."""
    ds, _ = runs["TZ=Asia/Tokyo"]
    files = [str(ds / loc) for loc in manifest_locations(ds)]
    con = duckdb.connect()
    try:
        con.execute(f"SET TimeZone = '{session_zone}'")
        got = con.sql(
            f"select ActivityId, typeof(ActivityTime), timezone('UTC', ActivityTime) "
            f"from read_parquet({files!r})"
        ).fetchall()
    finally:
        con.close()
    assert {t for _, t, _ in got} == {"TIMESTAMP WITH TIME ZONE"}
    assert {aid: utc for aid, _, utc in got} == {aid: t.replace(tzinfo=None) for aid, t in EXPECTED.items()}


def test_log_lines_are_stamped_in_utc_whatever_the_host_zone(tmp_path):
    """The text log's time stamps are UTC with a Z, also under a zone 14 hours ahead."""
    code = (
        "import logging, time; from datetime import UTC, datetime\n"
        "from insights_link.cli import configure_logging\n"
        "configure_logging('text'); before = datetime.now(UTC)\n"
        "logging.getLogger('insights_link.x').info('hello')\n"
        "print(before.strftime('%Y-%m-%dT%H'))\n"
    )
    env = {**os.environ, "TZ": "Pacific/Kiritimati"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    stamp = run.stderr.split(" INFO ")[0]
    assert stamp.endswith("Z") and stamp.startswith(run.stdout.strip()), (stamp, run.stdout)
