"""``share-profiles``: read what Customer Insights - Data exports (profiles, segments), decide
what may be shared, write it into a data source, set who can read it, enrich activities."""
