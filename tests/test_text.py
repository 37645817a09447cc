"""snapd.text.safe, the one escaper: what the ctl client prints and what rule errors quote."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from snapd.rules import RuleError
from snapd.text import safe


def test_escapes() -> None:
    assert safe("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert safe("\\x1b") == "\\\\x1b" != safe("\x1b") == "\\x1b"  # unambiguous
    assert safe("\x9b\x7f") == "\\x9b\\x7f"  # C1 control (CSI on some terminals), DEL
    assert safe("\u202eabc\u200b") == "\\u202eabc\\u200b"  # bidi override, zero-width space
    assert safe(b"\xff".decode("utf-8", "surrogateescape")) == "\\udcff"  # undecodable byte
    assert safe("café, 日本, ok") == "café, 日本, ok"


@given(st.text())
def test_one_printable_line(text: str) -> None:
    out = safe(text)
    assert out.isprintable() and "\n" not in out
    assert str(RuleError(text, 1, 1, text)).isprintable()
