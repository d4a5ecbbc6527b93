"""Parsers and point conversion: the sensor dialects, table-driven, and hypothesis over arbitrary bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.config import (
    CsvParser,
    JsonParser,
    KeyValueParser,
    NmeaParser,
    ParserSpec,
    PointSpec,
    RegexParser,
    StructParser,
)
from drivers.serial.framing import Counters, nmea_sentence
from drivers.serial.parsers import Rejected, build_parser, build_plan, convert
from gateway.model import Quality


def parse(spec: ParserSpec, payload: bytes) -> object:
    return build_parser(spec)(payload)


def test_regex_named_groups_become_fields() -> None:
    spec = RegexParser(r"(?P<status>ST|US),GS,\s*(?P<weight>[-+]?[0-9.]+)\s*(?P<unit>\w+)?")
    assert parse(spec, b"ST,GS,  12.345 kg") == {"status": "ST", "weight": "12.345", "unit": "kg"}
    assert parse(spec, b"US,GS,-0.5") == {"status": "US", "weight": "-0.5", "unit": None}
    assert parse(spec, b"OL,GS") is Rejected.UNPARSABLE
    assert parse(spec, b"ST,GS,\xff1") is Rejected.UNDECODABLE


def test_csv_columns_by_index_and_name_with_quotes_and_empty_cells() -> None:
    spec = CsvParser(";", ("station", "temp"))
    assert parse(spec, b'"WS;1"; 21.5;;x') == {
        "0": "WS;1",
        "1": "21.5",
        "2": None,
        "3": "x",
        "station": "WS;1",
        "temp": "21.5",
    }


def test_json_lines_are_flattened_to_dotted_keys() -> None:
    line = b'{"t": 21.5, "wind": {"speed": 3, "dir": "NW"}, "ok": true, "temps": [1, null]}'
    assert parse(JsonParser(), line) == {
        "t": 21.5,
        "wind.speed": 3,
        "wind.dir": "NW",
        "ok": True,
        "temps.0": 1,
        "temps.1": None,
    }
    assert parse(JsonParser(), b"[1, 2]") is Rejected.UNPARSABLE
    assert parse(JsonParser(), b"{" * 5000) is Rejected.UNPARSABLE


def test_key_value_pairs() -> None:
    assert parse(KeyValueParser(), b"CO2=412 T=21.5  RH= 40 junk") == {"CO2": "412", "T": "21.5", "RH": None}
    assert parse(KeyValueParser(",", ":"), b"a: 1, b :2") == {"a": "1", "b": "2"}
    assert parse(KeyValueParser(), b"nothing here") is Rejected.UNPARSABLE


def test_nmea_gga_and_rmc() -> None:
    gga = parse(
        NmeaParser(), nmea_sentence(b"GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,")
    )
    assert isinstance(gga, dict)
    assert gga["sentence"] == "GGA"
    assert gga["time"] == "09:27:50.000"
    assert gga["latitude"] == pytest.approx(53.361336667)
    assert gga["GGA.longitude"] == pytest.approx(-6.50562)
    assert (gga["fix_quality"], gga["satellites"], gga["hdop"], gga["altitude"]) == (1, 8, 1.03, 61.7)
    assert gga["geoid_separation"] == 55.2

    rmc = parse(NmeaParser(), b"$GNRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*68")
    assert isinstance(rmc, dict)
    # Two-digit years: GPS began in 1980, so 80-99 are 19xx.
    assert (rmc["utc"], rmc["date"]) == ("1994-11-19T22:54:46Z", "1994-11-19")
    assert (rmc["speed"], rmc["course"], rmc["valid"], rmc["magnetic_variation"]) == (0.5, 54.7, True, 20.3)
    assert rmc["RMC.latitude"] == pytest.approx(49.274166667)

    vtg = parse(NmeaParser(), b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48")
    assert isinstance(vtg, dict)
    assert (vtg["course"], vtg["course_magnetic"], vtg["speed"], vtg["VTG.speed_kmh"]) == (
        54.7,
        34.4,
        5.5,
        10.2,
    )
    gll = parse(NmeaParser(), b"$GPGLL,4916.45,N,12311.12,W,225444,A,*1D")
    assert isinstance(gll, dict)
    assert (gll["GLL.latitude"], gll["longitude"], gll["time"], gll["valid"]) == (
        pytest.approx(49.274166667),
        pytest.approx(-123.185333333),
        "22:54:44",
        True,
    )

    no_fix = parse(NmeaParser(), nmea_sentence(b"GPRMC,225446,V,,,,,,,191194,,"))
    assert isinstance(no_fix, dict)
    assert (no_fix["latitude"], no_fix["valid"]) == (None, False)
    assert parse(NmeaParser(), nmea_sentence(b"GPGSV,3,1,11,03,03,111,00")) == {"sentence": "GSV"}
    assert parse(NmeaParser(), nmea_sentence(b"GPGGA,1,2,3")) is Rejected.UNPARSABLE
    assert parse(NmeaParser(), nmea_sentence(b"GPGGA,123519,4867.0,N,01131.000,E,1,08,0.9,1,M,,M,,")) is (
        Rejected.UNPARSABLE
    )


def test_struct_layouts_with_byte_order_and_names() -> None:
    spec = StructParser("<hI4s", ("temp", "count", "tag"))
    fields = parse(spec, struct.pack("<hI4s", -40, 70000, b"AB\x00\x00"))
    assert fields == {"0": -40, "1": 70000, "2": "AB", "temp": -40, "count": 70000, "tag": "AB"}
    assert parse(spec, b"\x00" * 9) is Rejected.UNPARSABLE


@pytest.mark.parametrize(
    ("kind", "raw", "scaling", "expected"),
    [
        ("float", "21.5", (1.0, 0.0), (21.5, None)),
        ("float", 101325, (0.01, 0.0), (pytest.approx(1013.25), None)),
        ("float", "x", (1.0, 0.0), (None, "not a number: 'x'")),
        ("float", "inf", (1.0, 0.0), (None, "not a finite number: 'inf'")),
        ("float", None, (1.0, 0.0), (None, "no value in frame")),
        ("int", "12", (10.0, -1.0), (119, None)),
        ("int", "12.0", (1.0, 0.0), (12, None)),
        ("int", 12.5, (1.0, 0.0), (None, "not an integer: 12.5")),
        ("bool", "ON", (1.0, 0.0), (True, None)),
        ("bool", 0, (1.0, 0.0), (False, None)),
        ("bool", "maybe", (1.0, 0.0), (None, "not a bool: 'maybe'")),
        ("string", True, (1.0, 0.0), ("true", None)),
        ("string", 7, (1.0, 0.0), ("7", None)),
    ],
)
def test_point_conversion(
    kind: str, raw: object, scaling: tuple[float, float], expected: tuple[object, str]
) -> None:
    point = PointSpec("p", "f", kind, None, *scaling)  # type: ignore[arg-type]
    assert convert(point, raw) == expected  # type: ignore[arg-type]


def test_a_polled_reply_missing_a_field_gives_a_bad_reading() -> None:
    points = (PointSpec("t", "T", unit="degC"), PointSpec("h", "H", unit="%"))
    plan = build_plan("box", KeyValueParser(), points, Counters(), missing_is_bad=True)
    readings = plan.readings(b"T=20.5", 100.0)
    assert isinstance(readings, list)
    assert [(r.point, r.value, r.quality, r.reason, r.unit, r.timestamp) for r in readings] == [
        ("t", 20.5, Quality.GOOD, None, "degC", 100.0),
        ("h", None, Quality.BAD, "not in reply", "%", 100.0),
    ]


PARSERS: list[ParserSpec] = [
    RegexParser(r"(?P<a>\d+)\s*(?P<b>\w+)?"),
    CsvParser(",", ("x", "y")),
    JsonParser(),
    KeyValueParser(),
    KeyValueParser(";", ":"),
    NmeaParser(),
    StructParser(">hHBf?4s"),
]
POINTS = tuple(
    PointSpec(f"p{i}-{t}", f, t)
    for i, f in enumerate(("a", "x", "0", "1", "latitude", "utc"))
    for t in ("float", "int", "bool", "string")
)

nmea_like = st.builds(
    lambda kind, fields: b"$GP" + kind + b"," + ",".join(fields).encode(),
    st.sampled_from([b"GGA", b"RMC", b"VTG", b"GLL", b"GSV"]),
    st.lists(st.text(alphabet="0123456789.-+NSEWAVM eE", max_size=12), max_size=14),
)


@settings(max_examples=200, deadline=None)
@given(payload=st.one_of(st.binary(max_size=120), nmea_like, st.binary(min_size=16, max_size=16)))
def test_arbitrary_payloads_never_raise_in_any_parser_or_point(payload: bytes) -> None:
    for spec in PARSERS:
        counters = Counters()
        plan = build_plan("dev", spec, POINTS, counters, missing_is_bad=True)
        result = plan.readings(payload, 0.0)
        if isinstance(result, Rejected):
            assert counters.undecodable + counters.unparsable == 1
        else:
            assert len(result) == len(POINTS)
            assert all((r.value is None) == (r.quality is Quality.BAD) for r in result)


@pytest.mark.parametrize("kind", ["float", "int", "bool", "string"])
def test_a_311_digit_integer_from_a_json_sensor_is_a_bad_reading_not_an_exception(kind: str) -> None:
    huge = 10**310
    plan = build_plan(
        "probe",
        JsonParser(),
        (PointSpec("v", "v", kind), PointSpec("ok", "ok")),
        Counters(),
        missing_is_bad=True,  # type: ignore[arg-type]
    )
    readings = plan.readings(b'{"v": ' + str(huge).encode() + b', "ok": 1.5}', 1.0)
    assert not isinstance(readings, Rejected)
    by_point = {r.point: r for r in readings}
    assert by_point["ok"].value == 1.5 and by_point["ok"].quality is Quality.GOOD
    if kind == "float":
        assert by_point["v"].quality is Quality.BAD and "integer of 1030 bits" in (by_point["v"].reason or "")
    else:  # an int, bool or string point can hold it
        assert by_point["v"].value == {"int": huge, "bool": True, "string": str(huge)}[kind]


@pytest.mark.parametrize(
    "sentence",
    [
        b"GPGGA,092750.000,5321.6802,N,00630.3372,W,0,0,,61.7,M,55.2,M,,",
        b"GPRMC,092750.000,V,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A",
        b"GPGLL,5321.6802,N,00630.3372,W,092750.000,V,A",
    ],
)
def test_a_receiver_without_fix_gets_its_stale_position_published_as_bad_no_fix(sentence: bytes) -> None:
    points = (
        PointSpec("lat", "latitude"),
        PointSpec("lon", "longitude"),
        PointSpec("time", "time", "string"),
    )
    plan = build_plan("gps", NmeaParser(), points, Counters(), missing_is_bad=False)
    readings = plan.readings(nmea_sentence(sentence), 1.0)
    assert not isinstance(readings, Rejected)
    by_point = {r.point: r for r in readings}
    for name in ("lat", "lon"):
        assert (by_point[name].value, by_point[name].quality, by_point[name].reason) == (
            None,
            Quality.BAD,
            "no fix",
        )
    assert by_point["time"].quality is Quality.GOOD  # the receiver's clock is still valid without a fix


def test_a_receiver_with_a_fix_publishes_its_position_as_good() -> None:
    points = (PointSpec("lat", "latitude"),)
    plan = build_plan("gps", NmeaParser(), points, Counters(), missing_is_bad=False)
    readings = plan.readings(
        nmea_sentence(b"GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,"), 1.0
    )
    assert not isinstance(readings, Rejected)
    assert readings[0].quality is Quality.GOOD and readings[0].value == pytest.approx(53.36134)
