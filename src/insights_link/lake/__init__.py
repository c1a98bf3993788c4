"""The data-source folder: layout, table formats (CDM, Delta) and the commit protocol."""

from __future__ import annotations

TABLE_FORMATS = ("cdm", "delta")


def table_format(name: str):
    """The :class:`~insights_link.lake.tableformat.TableFormat` called ``name``."""
    if name == "delta":
        from insights_link.lake.delta import DeltaFormat

        return DeltaFormat()
    from insights_link.lake.cdm import CdmFormat

    return CdmFormat()
