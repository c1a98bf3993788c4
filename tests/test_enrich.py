"""``share-profiles --enrich``: EnrichedActivities equals a reference join computed here with
DuckDB from the committed activity rows, dimensions and memberships, in both table formats;
activities without a profile keep null dimensions and no segments."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from cdm_check import load_data_source
from conftest import REPO, RUN_TIME, export_run, manifest_locations, run_cli

SAMPLE = REPO / "sample_data" / "profiles"
DS = "CustomerProfiles"
ATTRS = ["LoyaltyTier", "OrdersCount", "EmailOptIn", "FirstPurchaseOn"]


def committed(lake, data_source: str, table: str, fmt: str) -> pa.Table:
    folder = lake / data_source
    if fmt == "delta":
        return DeltaTable(str(folder / table)).to_pyarrow_table().drop_columns(["ActivityDate"])
    import pyarrow.parquet as pq

    files = [folder / loc for loc in manifest_locations(folder) if loc.startswith(f"{table}/")]
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.mark.parametrize("fmt", ["cdm", "delta"])
def test_enriched_activities_equal_a_reference_join(tmp_path, fmt):
    lake = tmp_path / "lake"
    proc = export_run(REPO / "sample_data" / "exports", lake, "e1", fmt=fmt)
    assert proc.returncode == 0, proc.stderr
    args = ["share-profiles", "--profiles", str(SAMPLE / "Customer"), "--output", str(lake)]
    args += ["--user-key", "WebUserId", "--table-format", fmt, "--run-time", RUN_TIME]
    for a in ATTRS:
        args += ["--attribute", a]
    for s in ("HighValue", "SpringSaleResponders.csv"):
        args += ["--segments", str(SAMPLE / "segments" / s)]
    proc = run_cli(*args, "--enrich", "EngagementInsights/WebLog")
    assert proc.returncode == 0, proc.stderr

    con = duckdb.connect()
    con.sql("SET TimeZone='UTC'")
    con.register("activities", committed(lake, "EngagementInsights", "WebLog", fmt))
    con.register("dims", committed(lake, DS, "CustomerDimensions", fmt))
    con.register("members", committed(lake, DS, "SegmentMembership", fmt))
    enriched = committed(lake, DS, "EnrichedActivities", fmt)
    con.register("enriched", enriched)
    columns = "ActivityId, CustomerId, ActivityTime, EventActivity, WebAddress, " + ", ".join(ATTRS)
    reference = con.sql(
        f"""
        select {columns}, coalesce((select list_sort(list(distinct m.Segment)) from members m
                                    where m.WebUserId = a.CustomerId), []) as Segments
        from activities a left join dims d on d.WebUserId = a.CustomerId
        """
    ).fetchall()
    got = con.sql(f"select {columns}, Segments from enriched").fetchall()
    assert sorted(got, key=repr) == sorted(reference, key=repr)
    assert len(got) == con.sql("select count(*) from activities").fetchall()[0][0]
    # the sample has visitors without a profile (every 7th) and profiles with segments
    misses = con.sql("select count(*) from enriched where LoyaltyTier is null").fetchall()[0][0]
    hits = con.sql("select count(*) from enriched where len(Segments) > 0").fetchall()[0][0]
    assert misses > 0 and hits > 0
    assert (
        con.sql("select count(*) from enriched where LoyaltyTier is null and len(Segments) > 0").fetchall()[
            0
        ][0]
        == 0
    )
    assert enriched.schema.field("Segments").type == pa.list_(pa.string())
    assert enriched.schema.field("OrdersCount").type == pa.int64()
    assert enriched.schema.field("FirstPurchaseOn").type == pa.timestamp("us", tz="UTC")
    if fmt == "cdm":  # the CDM object model loads it, and verify finds the declared types
        loaded = load_data_source(str(lake / DS))
        assert loaded["EnrichedActivities"]["attributes"][-1] == "Segments"
        verify = run_cli("verify", "--lake", str(lake), "--data-source", DS)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_enrich_names_a_missing_data_source(tmp_path):
    lake = tmp_path / "lake"
    args = ["share-profiles", "--profiles", str(SAMPLE / "Customer"), "--output", str(lake)]
    args += ["--user-key", "WebUserId", "--attribute", "City", "--enrich", "Nowhere/WebLog"]
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "no data source 'Nowhere'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (lake / DS).exists()


def test_enrich_takes_names_never_paths(tmp_path):
    args = ["share-profiles", "--profiles", str(SAMPLE / "Customer"), "--output", str(tmp_path / "lake")]
    proc = run_cli(*args, "--user-key", "WebUserId", "--attribute", "City", "--enrich", "../WebLog")
    assert proc.returncode == 2 and "--enrich '..' breaks the naming rule" in proc.stderr
    assert not (tmp_path / "lake" / DS).exists()
