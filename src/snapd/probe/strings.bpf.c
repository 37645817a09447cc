// SPDX-License-Identifier: GPL-2.0-or-later
//
// In-kernel string matching for `when`: `path ~ "/etc/ssl/*"`, `path == "/x"`,
// `data contains "FATAL"`. Included by a program that defines the SNAPD_STR_* constants
// (snapd/probe/trigger_layout.py, passed as -D flags).
//
// A pattern is data (struct str_pattern, compiled by snapd/probe/strings.py): a shift-and
// automaton over one u64. Bit p of the state means "positions 0..p-1 of the pattern matched the
// bytes read so far"; a byte c moves every live position that accepts c (chars[c]) one step on,
// a '*' position keeps its bit (it eats c), and a live '*' also makes the next position live
// (it may match nothing). '*' runs are collapsed by the compiler, so one closure step suffices.
// The whole string matched when bit `accept` (the pattern's length) is set after its last byte.
//
// At most SNAPD_STR_BYTES bytes are read: a C string with bpf_probe_read_user_str, a buffer with
// bpf_probe_read_user (bpf-helpers(7)); the loop is bounded by that constant and walks one
// verifier path per byte, whatever the pattern.

#ifndef SNAPD_STR_BYTES
#error "SNAPD_STR_* constants come from snapd/probe/trigger_layout.py"
#endif

struct str_pattern {
    u64 star;        // bit p: position p is '*'
    u32 accept;      // number of positions; bit `accept` set at the end: matched
    u32 flags;       // STR_PF_TAIL_STAR: ends with '*', so a cut string's start decides
    u64 chars[256];  // bit p: position p accepts this byte (the literal, or '?')
};

struct str_src {
    u8 kind;         // STR_SRC_CSTR, _BUF, _IOV, _MSG (snapd.rules.sysargs.Source)
    u8 ptr;          // argument holding the pointer
    u8 len;          // STR_SRC_BUF: argument holding the byte count
    u8 pad[5];
};

// One more byte than is matched, so that a string of exactly SNAPD_STR_BYTES bytes can be told
// from a longer one; rounded up to a power of two for masked indexing. The includer keeps it in
// per-CPU map memory (bcc rewrites map accesses in the main source file only).
struct str_buf {
    u8 b[2 * SNAPD_STR_BYTES];
};

struct str_read {
    u32 len;         // bytes in buf to match
    u32 truncated;   // the string or buffer went on beyond them
};

struct str_iovec {
    u64 base;
    u64 len;
};

// A user buffer of `count` bytes at `ptr`: its first SNAPD_STR_BYTES bytes, or none.
#define STR_HIDE(x) asm volatile("" : "+r"(x))

static __always_inline int str_read_buf(u8 *buf, u64 ptr, u64 count, struct str_read *out)
{
    u32 n = count > SNAPD_STR_BYTES ? SNAPD_STR_BYTES : (u32)count;
    out->len = 0;
    out->truncated = count > SNAPD_STR_BYTES;
    if (n == 0)
        return 0;
    // re-bound n for the verifier: bpf_probe_read_user's size must be provably <= the buffer
    if (n > SNAPD_STR_BYTES)
        return -1;
    if (bpf_probe_read_user(buf, n, (void *)ptr) != 0)
        return -1;
    out->len = n;
    return 0;
}

// Reads the string `src` designates from the syscall arguments `args` into `buf`. `args` must
// have 8 readable slots (argument indexes are masked with 7, which the verifier can bound; the
// compiler of str_src never names an argument above 5).
// Returns 0 when something (maybe nothing: an empty write) was read, < 0 when it could not be
// (a bad pointer, a page not present): the comparison is then false.
static __always_inline int str_read_arg(const struct str_src *src, const s64 *args, u8 *buf,
                                        struct str_read *out)
{
    u32 kind = src->kind;
    u64 ptr = args[src->ptr & 7];
    out->len = 0;
    out->truncated = 0;
    if (kind == STR_SRC_CSTR) {
        long n = bpf_probe_read_user_str(buf, SNAPD_STR_BYTES + 1, (void *)ptr);
        if (n <= 0)
            return -1;
        // n counts the NUL: SNAPD_STR_BYTES + 1 means the string had at least STR_BYTES bytes
        // before the cut; whether the cut hid more, only an exact length could tell
        if (n > SNAPD_STR_BYTES) {
            out->len = SNAPD_STR_BYTES;
            out->truncated = 1;
        } else {
            out->len = n - 1;
        }
        return 0;
    }
    if (kind == STR_SRC_BUF)
        return str_read_buf(buf, ptr, args[src->len & 7], out);
    if (kind == STR_SRC_IOV || kind == STR_SRC_MSG) {
        if (kind == STR_SRC_MSG) {
            // struct user_msghdr (include/linux/socket.h): msg_iov at offset 16
            u64 iovp = 0;
            if (bpf_probe_read_user(&iovp, sizeof(iovp), (void *)(ptr + 16)) != 0)
                return -1;
            ptr = iovp;
        }
        struct str_iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)ptr) != 0)
            return -1;
        return str_read_buf(buf, iov.base, iov.len, out);
    }
    return -1;
}

// Does `pat` match the `in->len` bytes of `buf`? Branch-free per byte but for one test that
// ends the loop at the string's end or once no state is left. Two tests there ("i >= len ||
// st == 0") queue two verifier states per byte, and the 6.1 verifier gives up ("The sequence
// of 8193 jumps is too complex": BPF_COMPLEXITY_LIMIT_JMP_SEQ, kernel/bpf/verifier.c); running
// all SNAPD_STR_BYTES steps without a test walks too many instructions (E2BIG).
static __always_inline int str_match(const struct str_pattern *pat, const u8 *buf,
                                     const struct str_read *in)
{
    u64 star = pat->star;
    u64 st = 1;
    st |= (st & star) << 1;
    u64 len = in->len;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < SNAPD_STR_BYTES; i++) {
        // on: i < len and st != 0, computed without a branch (both below 2^63: the sign bit
        // of i - len is set exactly when i < len, that of -st exactly when st != 0); hidden
        // from clang, which would make the comparisons branches again
        u64 d = (u64)i - len, z = st;
        STR_HIDE(d);
        STR_HIDE(z);
        u64 on = (d >> 63) & ((z | -z) >> 63);
        STR_HIDE(on);
        if (!on)
            break;
        u8 c = buf[i & (2 * SNAPD_STR_BYTES - 1)];
        u64 nst = ((st & pat->chars[c]) << 1) | (st & star);
        st = nst | ((nst & star) << 1);
    }
    u64 hit = (st >> (pat->accept & 63)) & 1;
    // a cut string matches only a pattern whose end is '*' (its start decided)
    if (in->truncated && !(pat->flags & STR_PF_TAIL_STAR))
        hit = 0;
    return hit;
}
