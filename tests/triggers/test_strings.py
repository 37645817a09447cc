"""String matching in the kernel (src/snapd/probe/strings.bpf.c) against the Python reference
(snapd.rules.patterns.matches), on a real victim's openat/write/writev/sendto/sendmsg."""

from __future__ import annotations

import ctypes as ct
import errno
import fnmatch
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapd.probe import strings as pstrings
from snapd.rules import sysargs
from snapd.rules import syscalls as sysnames
from snapd.rules.patterns import MAX_ELEMENTS, STR_BYTES, Elem, Mode, PatternError, matches, parse
from support.triggers import Ring, build, command, hexs, set_struct, until
from support.victims import Victim

# ---- the pattern language (no kernel) --------------------------------------------------------


def test_nul_is_refused_however_written() -> None:
    for text in ("a\0b", "a\\x00b"):
        for mode in Mode:
            with pytest.raises(PatternError, match="NUL") as ei:
                parse(text, mode)
            assert ei.value.pos == 1


def test_longer_than_the_bound_is_refused_at_compile_time() -> None:
    parse("x" * MAX_ELEMENTS, Mode.EQUAL)
    with pytest.raises(PatternError, match="too long"):
        parse("x" * (MAX_ELEMENTS + 1), Mode.EQUAL)
    parse("y" * (MAX_ELEMENTS - 2), Mode.CONTAINS)  # the two implied '*'
    with pytest.raises(PatternError, match="implied"):
        parse("y" * (MAX_ELEMENTS - 1), Mode.CONTAINS)
    # '*' runs are one position; escapes are one byte
    assert len(parse("*" * 500 + "a", Mode.GLOB).elements) == 2
    assert parse("\\x41\\*\\?\\\\", Mode.GLOB).elements == (0x41, ord("*"), ord("?"), ord("\\"))


@pytest.mark.parametrize(
    "text,why", [("a\\", "lone"), ("\\q", "unknown escape"), ("\\x4", "two hex"), ("", "non-empty")]
)
def test_bad_escapes(text: str, why: str) -> None:
    with pytest.raises(PatternError, match=why):
        parse(text, Mode.CONTAINS if not text else Mode.GLOB)


def test_contains_takes_wildcards_literally() -> None:
    p = parse("a*b?", Mode.CONTAINS)
    assert p.elements == (Elem.STAR, 0x61, 0x2A, 0x62, 0x3F, Elem.STAR)
    assert matches(p, b"xxa*b?yy") and not matches(p, b"axxb!")


_ALPHA = st.sampled_from("ab*?")


@given(pat=st.text(_ALPHA, max_size=12), s=st.text(st.sampled_from("ab"), max_size=20))
def test_reference_agrees_with_fnmatch(pat: str, s: str) -> None:
    assert matches(parse(pat, Mode.GLOB), s.encode()) == fnmatch.fnmatchcase(s, pat)


def test_string_arguments_from_the_formats() -> None:
    if sysnames.events_dir() is None:
        pytest.skip("tracefs is not readable (run as root)")
    assert sysargs.alias("openat", "filename") == 1 and sysargs.alias("write", "count") == 2
    assert sysargs.string_arg("openat", "path") == sysargs.StringArg(sysargs.Source.CSTR, 1)
    assert sysargs.string_arg("write", "data") == sysargs.StringArg(sysargs.Source.BUF, 1, 2)
    assert sysargs.string_arg("sendto", "data") == sysargs.StringArg(sysargs.Source.BUF, 1, 2)
    assert sysargs.string_arg("writev", "data") == sysargs.StringArg(sysargs.Source.IOV, 1)
    assert "several strings" in str(sysargs.string_arg("rename", "path"))
    assert sysargs.string_arg("rename", "newname") == sysargs.StringArg(sysargs.Source.CSTR, 1)
    assert "no path" in str(sysargs.string_arg("getpid", "path"))
    assert "not a string" in str(sysargs.string_arg("write", "count"))
    assert "writes no data" in str(sysargs.string_arg("read", "data"))


# ---- in the kernel ---------------------------------------------------------------------------


class Result(ct.Structure):
    _fields_ = [
        ("nr", ct.c_int32),
        ("matched", ct.c_uint32),
        ("read_rc", ct.c_int32),
        ("len", ct.c_uint32),
        ("truncated", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("arg0", ct.c_int64),
    ]


SYSCALLS = ("openat", "write", "writev", "sendto", "sendmsg")


class Matcher:
    """The prototype loaded for one victim: set a pattern, provoke one call, read the verdict."""

    def __init__(self, bpf: Any, ring: Ring, v: Victim) -> None:
        self.bpf, self.v, self.ring = bpf, v, ring
        set_struct(bpf, "cfgmap", 0, v.pid.to_bytes(4, "little") + bytes(4))
        nrs = sysnames.numbers()
        self.openat = nrs["openat"]
        for name in SYSCALLS:
            what = "path" if name == "openat" else "data"
            src = sysargs.string_arg(name, what)
            assert isinstance(src, sysargs.StringArg), src
            set_struct(bpf, "sources", nrs[name], pstrings.pack_source(src))

    def set(self, text: str, mode: Mode) -> Any:
        p = parse(text, mode)
        set_struct(self.bpf, "patterns", 0, pstrings.compile_pattern(p).pack())
        return p

    def once(self, cmd: str) -> tuple[Result, tuple[int, int, int]]:
        """Run one command; the verdict on its one call (the victim's "done" line, a write to
        its stdout, is not that call)."""
        nr = sysnames.numbers()[dict(zip("owvsm", SYSCALLS, strict=True))[cmd[0]]]

        def mine() -> list[Result]:
            return [r for r in self.ring.records if r.nr == nr and not (r.nr != self.openat and r.arg0 == 1)]

        self.ring.take()
        done = command(self.v, cmd)
        until(lambda: self.ring.drain(0.02) and mine(), f"the verdict on {cmd[:40]!r}")
        self.ring.drain(0.05)
        recs = mine()
        assert len(recs) == 1, [(r.nr, r.matched) for r in recs]
        return recs[0], done


@pytest.fixture(scope="module")
def proto() -> Iterator[tuple[Any, Ring]]:
    b = build("strings_proto")
    for name in SYSCALLS:
        b.attach_tracepoint(tp=f"syscalls:sys_enter_{name}".encode(), fn_name=b"proto_sys_enter")
    yield b, Ring(b, "results", Result)
    b.cleanup()


@pytest.fixture
def matcher(
    proto: tuple[Any, Ring], compile_victim: Callable[..., Path], spawn: Callable[..., Victim]
) -> Matcher:
    v = spawn([compile_victim("trg_victim")])
    return Matcher(*proto, v)


@pytest.mark.kernel
def test_path_glob_on_openat(matcher: Matcher) -> None:
    p = matcher.set("/etc/ssl/*", Mode.GLOB)
    r, (_, ret, err) = matcher.once("o " + hexs(b"/etc/ssl/trg-missing.pem"))
    assert (r.matched, r.read_rc, r.truncated) == (1, 0, 0) and ret == -1 and err == errno.ENOENT
    assert r.len == len(b"/etc/ssl/trg-missing.pem")
    r, _ = matcher.once("o " + hexs(b"/etc/sslx/trg-missing"))
    assert r.matched == 0 and not matches(p, b"/etc/sslx/trg-missing")
    matcher.set("/etc/ssl/trg-missing.pem", Mode.EQUAL)
    assert matcher.once("o " + hexs(b"/etc/ssl/trg-missing.pem"))[0].matched == 1
    assert matcher.once("o " + hexs(b"/etc/ssl/trg-missing.pe"))[0].matched == 0
    matcher.set("/etc/???/*.pem", Mode.GLOB)
    assert matcher.once("o " + hexs(b"/etc/ssl/x/y.pem"))[0].matched == 1


@pytest.mark.kernel
@pytest.mark.parametrize("cmd", ["w", "v", "s", "m"])
def test_data_contains_on_writes(matcher: Matcher, cmd: str) -> None:
    matcher.set("FATAL", Mode.CONTAINS)
    data = b"2026-01-01 12:00:00 worker[7]: FATAL: out of slots\n"
    line = f"{cmd} {hexs(data)}" + (" " + hexs(b"second iovec") if cmd == "v" else "")
    r, (_, ret, _) = matcher.once(line)
    assert r.matched == 1 and r.read_rc == 0 and ret == len(data) + (12 if cmd == "v" else 0)
    r, _ = matcher.once(f"{cmd} {hexs(b'all is fine, not fatal')}")
    assert r.matched == 0


@pytest.mark.kernel
def test_only_the_first_256_bytes_and_the_first_iovec(matcher: Matcher) -> None:
    matcher.set("FATAL", Mode.CONTAINS)
    edge = b"x" * (STR_BYTES - 5) + b"FATAL"  # ends exactly at byte 256
    r, _ = matcher.once("w " + hexs(edge + b"tail"))
    assert (r.matched, r.len, r.truncated) == (1, STR_BYTES, 1)
    late = b"x" * (STR_BYTES - 4) + b"FATAL"  # its last byte is the 257th
    assert matcher.once("w " + hexs(late))[0].matched == 0
    r, _ = matcher.once(f"v {hexs(b'ok')} {hexs(b'FATAL')}")  # in the second iovec: not read
    assert r.matched == 0 and r.len == 2


@pytest.mark.kernel
def test_cut_path_matches_only_by_its_start(matcher: Matcher) -> None:
    long_path = b"/tmp/" + b"d" * 300 + b".pem"
    head = matcher.set("/tmp/d*", Mode.GLOB)
    r, _ = matcher.once("o " + hexs(long_path))
    assert (r.matched, r.len, r.truncated) == (1, STR_BYTES, 1)
    assert matches(head, long_path[:STR_BYTES], truncated=True)
    tail = matcher.set("*.pem", Mode.GLOB)
    assert matcher.once("o " + hexs(long_path))[0].matched == 0  # its end was not read
    assert not matches(tail, long_path[:STR_BYTES], truncated=True)


def _chunks(seq: list[int], n: int) -> Iterator[list[int]]:
    it = iter(seq)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


@pytest.mark.kernel
@pytest.mark.parametrize("where", ["data", "path"])
def test_every_odd_byte(matcher: Matcher, where: str) -> None:
    """Bytes 1..255 in patterns (as \\xHH escapes or raw) and in the target's strings."""
    for chunk in _chunks(list(range(1, 256)), 40):
        lit = bytes(chunk)
        text = "".join(f"\\x{b:02x}" for b in chunk)
        mode = Mode.CONTAINS if where == "data" else Mode.GLOB
        p = matcher.set(text if where == "data" else "*" + text + "*", mode)
        hay = b"head" + lit + b"tail"
        cmd = ("w " if where == "data" else "o ") + hexs(hay)
        assert matcher.once(cmd)[0].matched == 1, chunk
        assert matches(p, hay)
        wrong = bytearray(hay)
        wrong[4 + len(chunk) // 2] ^= 0x01 if wrong[4 + len(chunk) // 2] != 1 else 0x02
        assert matcher.once(cmd[:2] + hexs(bytes(wrong)))[0].matched == 0, chunk


@pytest.mark.kernel
def test_question_mark_takes_every_byte(matcher: Matcher) -> None:
    p = matcher.set("/q?", Mode.GLOB)
    for b in (1, 0x2A, 0x3F, 0x7F, 0x80, 0xFF):
        path = b"/q" + bytes([b])
        assert matcher.once("o " + hexs(path))[0].matched == 1 and matches(p, path)
    assert matcher.once("o " + hexs(b"/q"))[0].matched == 0
    assert matcher.once("o " + hexs(b"/qab"))[0].matched == 0


@pytest.mark.kernel
def test_unreadable_buffer_is_no_match(matcher: Matcher) -> None:
    matcher.set("*", Mode.GLOB)
    r, _ = matcher.once("w -")  # an empty write: nothing read, '*' matches the empty string
    assert (r.read_rc, r.len, r.matched) == (0, 0, 1)
