"""snapd.units: the one grammar of sizes, durations and percentages (no root, no kernel)."""

from __future__ import annotations

import pytest

from snapd.units import DURATION_NS, MAX_NS, SIZE_BYTES, UnitError, parse_duration, parse_percent, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2GiB", 2 << 30),  # rule files (IEC)
        ("64MiB", 64 << 20),
        ("512 MiB", 512 << 20),
        ("1kB", 1000),  # SI
        ("3 GB", 3 * 10**9),
        ("1TB", 10**12),
        ("4G", 4 << 30),  # systemd's single letters: powers of 1024
        ("5M", 5 << 20),
        ("600M", 600 << 20),
        ("8K", 8192),
        ("1T", 1 << 40),
        ("1.5G", 3 << 29),  # decimals
        ("7B", 7),
        (" 2GiB ", 2 << 30),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value
    assert parse_size(text, bare=True) == value


@pytest.mark.parametrize("text", ["2Gb", "4g", "2", "", "GiB", "-1G", "1.G", "2 GiBs", "1e3K", "10%"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UnitError, match="bad size"):
        parse_size(text)


def test_bare_bytes_only_where_allowed() -> None:
    assert parse_size("1048576", bare=True) == 1 << 20
    assert parse_size("0", bare=True, minimum=0) == 0
    with pytest.raises(UnitError, match="a number and a unit"):
        parse_size("1048576")
    with pytest.raises(UnitError, match="more than zero"):
        parse_size("0B")
    with pytest.raises(UnitError, match="too large"):
        parse_size("9" * 31 + "B")
    with pytest.raises(UnitError, match="too large"):
        parse_size("8388608T")  # 2**63


def test_percent() -> None:
    assert parse_percent("90%") == 90.0
    assert parse_percent("250.5%") == 250.5  # a cpu share may exceed 100%
    assert parse_percent("0%", zero=True) == 0.0
    for bad, kw, why in (
        ("90", {}, "write it like"),
        ("0%", {}, "above 0%"),
        ("101%", {"maximum": 100}, "at most 100%"),
    ):
        with pytest.raises(UnitError, match=why):
            parse_percent(bad, **kw)  # type: ignore[arg-type]


def test_durations() -> None:
    assert parse_duration("500ms") == 500_000_000
    assert parse_duration("2d") == 2 * 86_400_000_000_000
    for bad in ("10", "10 sec", "0s", "1y"):
        with pytest.raises(UnitError, match="bad duration"):
            parse_duration(bad)


@pytest.mark.parametrize(("unit", "ns"), list(DURATION_NS.items()))
def test_every_duration_unit(unit: str, ns: int) -> None:
    assert parse_duration(f"3{unit}") == 3 * ns
    assert parse_duration(f" 3{unit} ") == 3 * ns


def test_duration_bounds() -> None:
    assert parse_duration(f"{MAX_NS}ns") == MAX_NS
    too_long = [(f"{MAX_NS + 1}ns", "too long"), ("106752d", "too long"), ("9" * 31 + "s", "use a number")]
    for bad, why in too_long:
        with pytest.raises(UnitError, match=why):
            parse_duration(bad)


@pytest.mark.parametrize(("unit", "factor"), list(SIZE_BYTES.items()))
def test_every_size_unit(unit: str, factor: int) -> None:
    assert parse_size(f"2{unit}") == 2 * factor


def test_size_minimum_and_fractions() -> None:
    assert parse_size("0.5KiB") == 512
    assert parse_size("1.0009kB") == 1000  # a fraction of a byte is dropped
    with pytest.raises(UnitError, match="must be at least 4096 bytes"):
        parse_size("1K", minimum=4096)
    with pytest.raises(UnitError, match="more than zero"):
        parse_size("0.0001kB")


def test_percent_bounds() -> None:
    assert parse_percent("100000%") == 100_000.0  # a cpu share of 1000 CPUs
    for bad, why in (("100001%", "at most 100000%"), ("-5%", "write it like"), ("%", "write it like")):
        with pytest.raises(UnitError, match=why):
            parse_percent(bad)
