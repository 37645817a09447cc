"""The XSAVE layout conversion, on synthetic buffers (no CPU needed)."""

from __future__ import annotations

import struct

from snapd.core.xsave import INTEL, LEGACY, XCR0_OFFSET, intel_layout

AMD_ZEN4 = {2: (576, 256), 5: (832, 64), 6: (896, 512), 7: (1408, 1024)}
XCR0_AVX512 = 0xE7  # x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM


def buffer(xcr0: int, offsets: dict[int, tuple[int, int]]) -> bytes:
    size = max(o + n for o, n in offsets.values())
    b = bytearray(size)
    b[:LEGACY] = bytes(range(256)) * 2 + bytes(LEGACY - 512)
    struct.pack_into("<Q", b, XCR0_OFFSET, xcr0)
    for i, (o, n) in offsets.items():
        b[o : o + n] = bytes([i]) * n  # each component filled with its own number
    return bytes(b)


def test_amd_layout_moves_to_intel_offsets():
    out = intel_layout(buffer(XCR0_AVX512, AMD_ZEN4), AMD_ZEN4)
    assert len(out) == 2688
    for i in (2, 5, 6, 7):
        off, n = INTEL[i]
        assert out[off : off + n] == bytes([i]) * n, i
    assert out[960:1088] == bytes(128)  # the MPX gap stays empty
    assert struct.unpack_from("<Q", out, XCR0_OFFSET)[0] == XCR0_AVX512


def test_intel_layout_is_left_alone():
    intel = {i: INTEL[i] for i in (2, 5, 6, 7)}
    b = buffer(XCR0_AVX512, intel)
    assert intel_layout(b, intel) is b


def test_unknown_component_or_offsets_leave_it_alone():
    amx = {**AMD_ZEN4, 17: (2432, 64)}
    b = buffer(XCR0_AVX512 | 1 << 17, amx)
    assert intel_layout(b, amx) is b  # gdb's layout has no place for AMX tile config
    c = buffer(XCR0_AVX512, AMD_ZEN4)
    assert intel_layout(c, {}) is c  # CPUID unavailable (MemoryDenyWriteExecute)
    assert intel_layout(c[:512], AMD_ZEN4) == c[:512]
