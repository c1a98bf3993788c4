"""Regenerate the sample Customer Insights - Data export in ``sample_data/profiles/``.

Deterministic (fixed seed, fixed dates): running it again rewrites the same bytes.

- ``Customer/``: the unified profiles as a legacy CDM folder, ``model.json`` plus two CSV
  partitions without a header (as Customer Insights writes them; the partition locations are
  the absolute https:// URLs Customer Insights puts there, which the reader maps onto the folder).
  ``WebUserId`` holds the ``cust-000NN`` values the sample events in ``sample_data/exports``
  carry as ``Signal.User.Id``; every 7th customer has no profile, so enrichment shows misses.
- ``segments/HighValue/``: a segment export as a CDM folder (``model.json``, CSV, CustomerId only).
- ``segments/SpringSaleResponders.csv``: a segment export as a plain CSV with a header.

    python sample_data/profiles/make_profiles.py
"""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 13
URL = "https://contosolake.dfs.core.windows.net/customerinsights"
CITIES = [("Seattle", "US"), ("Toronto", "CA"), ("Berlin", "DE"), ("Lyon", "FR"), ("Austin", "US")]
FIRST = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
TIERS = ["Bronze", "Silver", "Gold", "Platinum"]
ATTRIBUTES = [
    ("CustomerId", "guid"),
    ("WebUserId", "string"),
    ("crm_contactid", "string"),
    ("FirstName", "string"),
    ("City", "string"),
    ("Country", "string"),
    ("LoyaltyTier", "string"),
    ("LifetimeSpend", "decimal"),
    ("OrdersCount", "int64"),
    ("EmailOptIn", "boolean"),
    ("FirstPurchaseOn", "dateTime"),
]


def profiles() -> list[dict]:
    rng = random.Random(SEED)
    rows = []
    for n in range(1, 46):
        if n % 7 == 0:
            continue  # a visitor without a profile
        city, country = CITIES[rng.randrange(len(CITIES))]
        first = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(5 * 365 * 86400))
        rows.append(
            {
                "CustomerId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "WebUserId": f"cust-{n:05d}",
                "crm_contactid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "FirstName": FIRST[rng.randrange(len(FIRST))],
                "City": city,
                "Country": country,
                "LoyaltyTier": TIERS[rng.randrange(len(TIERS))],
                "LifetimeSpend": f"{rng.uniform(0, 5000):.2f}",
                "OrdersCount": str(rng.randrange(0, 60)),
                "EmailOptIn": "true" if rng.random() < 0.6 else "false",
                "FirstPurchaseOn": first.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    return rows


def csv_bytes(rows: list[dict], columns: list[str], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return out.getvalue().encode("utf-8")


def model_json(name: str, attributes: list[tuple[str, str]], partitions: list[str]) -> bytes:
    doc = {
        "name": "CustomerInsights",
        "description": "Customer Insights - Data export (sample)",
        "version": "1.0",
        "modifiedTime": "2024-05-03T00:00:00Z",
        "entities": [
            {
                "$type": "LocalEntity",
                "name": name,
                "attributes": [{"name": a, "dataType": t} for a, t in attributes],
                "partitions": [
                    {
                        "name": location.rsplit("/", 1)[-1].removesuffix(".csv"),
                        "refreshTime": "2024-05-03T00:00:00Z",
                        "location": f"{URL}/{location}",
                        "fileFormatSettings": {
                            "$type": "CsvFormatSettings",
                            "columnHeaders": False,
                            "delimiter": ",",
                            "quoteStyle": "QuoteStyle.Csv",
                            "csvStyle": "CsvStyle.QuoteAlways",
                        },
                    }
                    for location in partitions
                ],
            }
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    rows = profiles()
    columns = [a for a, _ in ATTRIBUTES]
    half = len(rows) // 2
    parts = ["Customer/Snapshot/Customer_1.csv", "Customer/Snapshot/Customer_2.csv"]
    write(HERE / "Customer" / "model.json", model_json("Customer", ATTRIBUTES, parts))
    write(HERE / parts[0], csv_bytes(rows[:half], columns, header=False))
    write(HERE / parts[1], csv_bytes(rows[half:], columns, header=False))
    rng = random.Random(SEED + 1)
    high = [r for r in rows if float(r["LifetimeSpend"]) >= 2500]
    seg = "segments/HighValue/HighValue/Snapshot/HighValue_1.csv"
    write(
        HERE / "segments" / "HighValue" / "model.json",
        model_json("HighValue", [("CustomerId", "guid")], [seg.removeprefix("segments/HighValue/")]),
    )
    write(HERE / seg, csv_bytes(high, ["CustomerId"], header=False))
    spring = [r for r in rows if rng.random() < 0.4]
    write(
        HERE / "segments" / "SpringSaleResponders.csv", csv_bytes(spring, ["CustomerId", "FirstName"], True)
    )


if __name__ == "__main__":
    main()
