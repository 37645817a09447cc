// SPDX-License-Identifier: GPL-2.0-or-later
//
// What the uprobe programs of the `function` and `usdt` triggers share: the attachment table,
// the values a predicate reads, and the entry record of return probes. Included by a program
// that defines the SNAPD_* constants of snapd/probe/trigger_layout.py.
//
// One uprobe program and one uretprobe program serve every rule. Each attachment (a rule's
// probe sites, in one process or system-wide) is a link to the program with a BPF cookie per
// site (a uprobe_multi link, 6.6+, or a perf event's, bpf_get_attach_cookie, 5.15+): the index
// of its `struct usite`, which names the rule slot and says how to read the arguments. No C is written per probe: a USDT operand is a
// `struct usdt_arg` that usdt_arg_value() interprets (snapd/probe/usdt.py compiles it).
//
// bcc rewrites map method calls (map.lookup(), .update()) in the main source file only, so the
// functions here take map values as pointers and leave every map access to the includer.

#ifndef SNAPD_USDT_ARGS
#error "SNAPD_* constants come from snapd/probe/trigger_layout.py"
#endif

struct usdt_arg {
    u8 kind;     // UA_NONE, UA_CONST, UA_REG, UA_MEM, UA_IPREL
    u8 size;     // 1, 2, 4, 8
    u8 is_signed;
    u8 scale;    // UA_MEM: index register multiplier; 0: no index register
    u16 reg;     // pt_regs byte offset of the (base) register
    u16 index;   // pt_regs byte offset of the index register
    s64 disp;    // UA_CONST: the value; UA_MEM: displacement; UA_IPREL: address - probe pc
};

struct usite {
    u32 gen;     // 0: free; else the generation of the rule it serves
    u32 slot;    // the rule
    u32 flags;   // US_USDT, US_SAVE_ENTRY, US_RETURN
    u32 nargs;   // US_USDT: operands at this site
    struct usdt_arg args[SNAPD_USDT_ARGS];
};

struct ukey {
    u32 tid;
    u32 site;
};

struct uentry {
    u64 ts;
    s64 args[6];
};

BPF_ARRAY(usites, struct usite, SNAPD_MAX_USITES);
// Calls between entry and return; LRU, so a thread that never returns (longjmp, exit) costs a
// slot until newer calls push it out. Recursion keeps the innermost entry only.
BPF_TABLE("lru_hash", struct ukey, struct uentry, uinflight, SNAPD_MAX_UINFLIGHT);

// Register `off` (a pt_regs byte offset) of ctx. A load from ctx must use a constant offset,
// so this is a switch (clang makes it a binary tree of compares: BPF has no jump tables), which
// is cheaper than copying all of pt_regs out with a helper call on every hit. Each case ends in
// an asm statement of its own: otherwise clang merges the cases into one load from ctx plus a
// variable offset, which the verifier refuses ("dereference of modified ctx ptr").
#define UREG_CASE(off, field)                             \
    case off: {                                           \
        u64 v = ctx->field;                               \
        asm volatile("/* " #field " */" : "+r"(v));       \
        return v;                                         \
    }

static __always_inline u64 usdt_reg(struct pt_regs *ctx, u32 off)
{
    switch (off) {
    UREG_CASE(0, r15)
    UREG_CASE(8, r14)
    UREG_CASE(16, r13)
    UREG_CASE(24, r12)
    UREG_CASE(32, bp)
    UREG_CASE(40, bx)
    UREG_CASE(48, r11)
    UREG_CASE(56, r10)
    UREG_CASE(64, r9)
    UREG_CASE(72, r8)
    UREG_CASE(80, ax)
    UREG_CASE(88, cx)
    UREG_CASE(96, dx)
    UREG_CASE(104, si)
    UREG_CASE(112, di)
    UREG_CASE(152, sp)
    }
    return 0;
}

// `v` cut to `size` bytes and widened back to 64 bits, signed or not.
static __always_inline s64 usdt_extend(u64 v, u64 size, u32 is_signed)
{
    u32 shift = (64 - 8 * size) & 63;
    u64 up = v << shift;
    return is_signed ? ((s64)up >> shift) : (s64)(up >> shift);
}

// The value of operand `a` at a site whose runtime pc is `ip`. 0 when memory cannot be read
// (the site's operands were all compiled; a fault is a race with the target's own memory).
static __always_inline s64 usdt_arg_value(struct pt_regs *ctx, const struct usdt_arg *a, u64 ip)
{
    u32 kind = a->kind;
    u64 size = a->size;  // 1, 2, 4 or 8 (snapd.probe.usdt); bounded again for the verifier,
    asm volatile("" : "+r"(size));  // which must see it at most 8 at bpf_probe_read_user
    if (size > 8 || size == 0)
        size = 8;
    if (kind == UA_CONST)
        return usdt_extend((u64)a->disp, size, a->is_signed);
    u64 base = usdt_reg(ctx, a->reg);
    if (kind == UA_REG)
        return usdt_extend(base, size, a->is_signed);
    u64 addr;
    if (kind == UA_MEM) {
        addr = base + a->disp;
        if (a->scale)
            addr += usdt_reg(ctx, a->index) * a->scale;
    } else if (kind == UA_IPREL) {
        addr = ip + a->disp;
    } else {
        return 0;
    }
    u64 v = 0;
    // 1..8 whatever size holds, by arithmetic: the 6.1 verifier lost the bound of the test
    // above by the time of the call ("invalid indirect access to stack ... size=255")
    u64 n = ((size - 1) & 7) + 1;
    asm volatile("" : "+r"(n));
    n = ((n - 1) & 7) + 1;
    bpf_probe_read_user(&v, n, (void *)addr);
    return usdt_extend(v, size, a->is_signed);
}

// arg0..arg5 at a probe: the calling convention's registers for a function entry (System V
// x86-64 ABI: rdi, rsi, rdx, rcx, r8, r9), the site's operands for a USDT probe, whose
// seventh to twelfth (<sys/sdt.h> STAP_PROBE12) are the fields FIELD_ARG6..FIELD_ARG11; of
// those, only the ones `reads` names (registers are read whole: six loads from ctx).
static __always_inline void uprobe_args(struct pt_regs *ctx, const struct usite *s, s64 *args,
                                        u32 reads)
{
    if (!(s->flags & US_USDT)) {
        args[0] = PT_REGS_PARM1(ctx);
        args[1] = PT_REGS_PARM2(ctx);
        args[2] = PT_REGS_PARM3(ctx);
        args[3] = PT_REGS_PARM4(ctx);
        args[4] = PT_REGS_PARM5(ctx);
        args[5] = PT_REGS_PARM6(ctx);
        return;
    }
    u64 ip = PT_REGS_IP(ctx);  // the probed address (kernel/events/uprobes.c handle_swbp)
    u32 n = s->nargs;
#pragma unroll
    for (int i = 0; i < SNAPD_USDT_ARGS; i++) {  // the index is a constant in each unrolled copy
        // ctx made opaque per copy: else clang shares an address computed from it between
        // copies (ctx + 8, spilled), which the verifier refuses ("modified ctx ptr")
        struct pt_regs *regs = ctx;
        asm volatile("" : "+r"(regs));
        if (i >= n)
            break;  // a rule never reads past the site's operands (snapd.probe.usdt.uncompiled)
        u32 fi = i < 6 ? i : FIELD_ARG6 + i - 6;
        if (reads & (1u << fi))  // the fields `reads` names only (a bit per FIELD_*)
            args[fi] = usdt_arg_value(regs, &s->args[i], ip);
    }
}

// The key of a call in uinflight: the entry half of a return rule stores {ts, args} there, the
// return half takes them (a return without an entry, attached mid-call, finds nothing).
static __always_inline struct ukey uprobe_call_key(u32 site, u64 pid_tgid)
{
    struct ukey k = {.tid = (u32)pid_tgid, .site = site};
    return k;
}
