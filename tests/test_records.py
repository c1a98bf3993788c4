"""The contract's pure functions, as tables: decode, validate, map. No Beam, no storage."""

from datetime import UTC, datetime

import pytest

from insights_link.core.contract import ContractError, cdm_safe_name, check_name
from insights_link.core.records import (
    Activity,
    Rejection,
    check_event,
    check_uri,
    decode_avro_record,
    decode_csv_row,
    decode_json_bytes,
    parse_timestamp,
)


def nested(**over):
    signal = {
        "Export": {"Id": "e1"},
        "User": {"Id": "u1"},
        "Timestamp": "2024-05-01T10:00:00Z",
        "View": {"Uri": "https://contoso.com/promo"},
        "Action": {"Name": "Email promotion"},
        "Name": "EmailPromoClick",
    }
    for dotted, value in over.items():
        node = signal
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node[p]
        if value is KeyError:
            node.pop(parts[-1])
        else:
            node[parts[-1]] = value
    return {"Signal": signal}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123456Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T10:00:00.123456789Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T10:00:00+02:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
        ("2024-05-01T00:30:00-01:00", datetime(2024, 5, 1, 1, 30, tzinfo=UTC)),
        ("2024-05-01T10:00:00+0530", datetime(2024, 5, 1, 4, 30, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),  # no zone means UTC
        ("2024-05-01T10:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        (1714557600000, datetime(2024, 5, 1, 10, tzinfo=UTC)),  # epoch milliseconds
        ("1714557600000", datetime(2024, 5, 1, 10, tzinfo=UTC)),  # CSV carries it as text
    ],
)
def test_parse_timestamp_accepts(text, expected):
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2024-04-31T10:00:00Z",  # impossible date: never rolled over to May 1
        "2023-02-29T10:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T10:60:00Z",
        "2024-05-01",  # a date is not a timestamp
        "2024-05-01 10:00:00Z",  # ISO 8601 needs the T
        "01/05/2024 10:00",
        "yesterday",
        "",
        "2024-05-01T10:00:00+25:00",
        True,
        1.5e12,
        "2024-05-01T10:00:00ZZ",
    ],
)
def test_parse_timestamp_rejects(value):
    assert isinstance(parse_timestamp(value), str)


@pytest.mark.parametrize(
    "uri,ok",
    [
        ("https://contoso.com/a?b=c#d", True),
        ("HTTP://contoso.com", True),
        ("http://[::1]:8080/x", True),
        ("javascript:alert(1)", False),
        ("/relative/path", False),
        ("contoso.com/page", False),
        ("ftp://contoso.com/file", False),
        ("https://", False),
        ("https://conto so.com", False),
        ("http://[::1", False),
    ],
)
def test_check_uri(uri, ok):
    assert (check_uri(uri) is None) == ok


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'"just a string"', "malformed"),
        (b'{"Signal": ', "malformed"),
        (b'{"Signal": {"Export": {"Id": "\xff"}}}', "malformed"),  # invalid UTF-8
    ],
)
def test_decode_json_rejects(raw, reason):
    out = decode_json_bytes(raw)
    assert isinstance(out, Rejection) and out.reason == reason


def test_decode_json_accepts_object():
    assert decode_json_bytes(b'{"Signal.Export.Id": "x"}') == {"Signal.Export.Id": "x"}


@pytest.mark.parametrize(
    "event,reason,named",
    [
        (nested(Export__Id=KeyError), "missing_field", "Signal.Export.Id"),
        (nested(User__Id=None), "missing_field", "Signal.User.Id"),
        (nested(Action__Name="   "), "missing_field", "Signal.Action.Name"),
        (nested(View=KeyError), "missing_field", "Signal.View.Uri"),
        (nested(Export__Id={"a": 1}), "invalid_type", "Signal.Export.Id"),
        (nested(User__Id=[1]), "invalid_type", "Signal.User.Id"),
        (nested(Action__Name=True), "invalid_type", "Signal.Action.Name"),
        (nested(Timestamp=False), "invalid_type", "Signal.Timestamp"),
        (nested(Timestamp="2024-04-31T10:00:00Z"), "invalid_timestamp", "2024-04-31"),
        (nested(View__Uri="javascript:alert(1)"), "invalid_uri", "javascript:alert(1)"),
        (nested(View__Uri="/promo"), "invalid_uri", "/promo"),
    ],
)
def test_check_event_rejects(event, reason, named):
    out = check_event(event)
    assert isinstance(out, Rejection)
    assert out.reason == reason
    assert named in out.detail


def test_several_problems_first_reason_wins_and_detail_names_all():
    out = check_event(nested(User__Id=KeyError, Action__Name=[1], Timestamp="nope", View__Uri="x"))
    assert out.reason == "missing_field"
    for part in (
        "missing_field",
        "Signal.User.Id",
        "invalid_type",
        "Signal.Action.Name",
        "invalid_timestamp",
        "invalid_uri",
    ):
        assert part in out.detail


def test_maps_nested_event():
    out = check_event(nested(Session={"Id": "s1"}), properties=("Signal.Session.Id", "Signal.Device.Type"))
    assert out == Activity(
        "e1",
        "u1",
        datetime(2024, 5, 1, 10, tzinfo=UTC),
        "EmailPromoClick",
        "https://contoso.com/promo",
        "Email promotion",
        ("s1", None),
    )


def test_maps_flat_event_with_integer_ids_and_no_name():
    event = {
        "Signal.Export.Id": 42,
        "Signal.User.Id": 7,
        "Signal.Timestamp": 1714557600000,
        "Signal.View.Uri": "http://a.b/c",
        "Signal.Action.Name": "x",
    }
    out = check_event(event)
    assert isinstance(out, Activity)
    assert (out.activity_id, out.customer_id, out.event_name) == ("42", "7", None)


def test_avro_logical_timestamp_is_accepted():
    aware = datetime(2024, 5, 1, 12, tzinfo=UTC)
    out = check_event(nested(Timestamp=aware))
    assert isinstance(out, Activity) and out.activity_time == aware
    naive = check_event(nested(Timestamp=datetime(2024, 5, 1, 12)))
    assert naive.activity_time == aware


def test_non_ascii_digits_are_not_a_timestamp():
    assert isinstance(parse_timestamp("\u0662\u0660\u0662\u0664-05-01T10:00:00Z"), str)


def test_csv_row_field_count_mismatch_is_malformed():
    out = decode_csv_row(["a", "b"], ["1", "2", "3"])
    assert isinstance(out, Rejection) and out.reason == "malformed"


def test_csv_empty_cell_is_absent():
    assert decode_csv_row(["a", "b"], ["1", ""]) == {"a": "1"}


def test_avro_capture_body_decoded_and_bad_body_malformed():
    good = decode_avro_record({"SequenceNumber": 1, "Body": b'{"Signal": {"Name": "x"}}'})
    assert good == {"Signal": {"Name": "x"}}
    bad = decode_avro_record({"SequenceNumber": 2, "Body": b"\x00\xff"})
    assert isinstance(bad, Rejection) and bad.reason == "malformed" and "Body" in bad.detail


@pytest.mark.parametrize(
    "name,ok",
    [
        ("WebLog", True),
        ("Web_Log2", True),
        ("2Web", False),
        ("Web-Log", False),
        ("date=2024", False),
        ("", False),
    ],
)
def test_naming_rule(name, ok):
    if ok:
        assert check_name(name, "--activity-name") == name
    else:
        with pytest.raises(ContractError, match="--activity-name"):
            check_name(name, "--activity-name")


def test_cdm_safe_name():
    assert cdm_safe_name("Signal.Session.Id") == "SignalSessionId"
    assert cdm_safe_name("Signal.Device.screen_size") == "SignalDeviceScreen_size"
