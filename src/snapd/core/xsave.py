"""NT_X86_XSTATE in the layout every gdb reads.

PTRACE_GETREGSET(NT_X86_XSTATE) returns the XSAVE "standard format", whose component offsets
are the CPU's own (CPUID leaf 0xD). Intel CPUs leave room for MPX before the AVX-512 state;
AMD Zen 4 does not (opmask at 832 instead of 1088), so its buffer is 2432 bytes where Intel's is
2688. gdb up to 13 knows only Intel's offsets: on such a core it warns "Section .reg-xstate too
small" and shows the upper halves of the YMM/ZMM registers as unavailable (the kernel's own
cores included). gdb's gcore writes Intel's layout, and newer gdb infers the layout from the
note's size. So we write Intel's layout too: each component moved from the CPU's offset to
Intel's, as gdb's i387_collect_xsave lays it out.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import struct

#: component -> (offset, size) in Intel's standard format (gdb i386-tdep / i387-tdep.c)
INTEL = {
    2: (576, 256),
    3: (960, 64),
    4: (1024, 64),
    5: (1088, 64),
    6: (1152, 512),
    7: (1664, 1024),
    9: (2688, 8),
}
XCR0_OFFSET = 464  # the kernel stores XCR0 in the FXSAVE area's software-reserved bytes
LEGACY = 576  # x87/SSE area + XSAVE header: the same everywhere

# cpuid(leaf, subleaf, out[4]) for the System V ABI: push rbx; mov eax,edi; mov ecx,esi;
# mov r8,rdx; cpuid; mov [r8],eax; mov [r8+4],ebx; mov [r8+8],ecx; mov [r8+12],edx; pop rbx; ret
_CPUID = bytes.fromhex("5389f889f14989d00fa24189004189580441894808418950 0c5bc3".replace(" ", ""))


@functools.cache
def cpu_offsets() -> dict[int, tuple[int, int]] | None:
    """(offset, size) of each XSAVE component on this CPU, or None if CPUID cannot be run
    (e.g. under MemoryDenyWriteExecute): then notes are left as the kernel gave them."""
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    page.write(_CPUID)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(addr)
    out = (ctypes.c_uint32 * 4)()
    result = {}
    for i in range(2, 19):
        fn(0xD, i, ctypes.addressof(out))
        size, offset = out[0], out[1]
        if size:
            result[i] = (offset, size)
    del fn
    return result


def intel_layout(xstate: bytes, offsets: dict[int, tuple[int, int]] | None = None) -> bytes:
    """``xstate`` rewritten with Intel's offsets; unchanged when it already has them, or when it
    holds a component gdb's layout has no place for (AMX, CET...) or the offsets are unknown."""
    if len(xstate) <= LEGACY:
        return xstate
    offsets = cpu_offsets() if offsets is None else offsets
    if not offsets:
        return xstate
    xcr0 = struct.unpack_from("<Q", xstate, XCR0_OFFSET)[0]
    enabled = [i for i in range(2, 64) if xcr0 >> i & 1]
    if any(i not in INTEL or i not in offsets for i in enabled):
        return xstate
    if all(offsets[i][0] == INTEL[i][0] for i in enabled):
        return xstate
    size = max([LEGACY, *(INTEL[i][0] + INTEL[i][1] for i in enabled)])
    out = bytearray(size)
    out[:LEGACY] = xstate[:LEGACY]
    for i in enabled:
        src, n = offsets[i]
        dst = INTEL[i][0]
        out[dst : dst + n] = xstate[src : src + n]
    return bytes(out)
