// SPDX-License-Identifier: GPL-2.0-or-later
//
// What the uprobe programs of the `function` and `usdt` triggers share: the attachment table,
// the values a predicate reads, and the entry record of return probes. Included by a program
// that defines the SNAPD_* constants of snapd/probe/trigger_layout.py.
//
// One uprobe program and one uretprobe program serve every rule. Each attachment (a rule's
// probe site, in one process or system-wide) is a perf event linked to the program with a BPF
// cookie (bpf_get_attach_cookie, Linux 5.15+): the index of its `struct usite`, which names the
// rule slot and says how to read the arguments. No C is written per probe: a USDT operand is a
// `struct usdt_arg` that usdt_arg_value() interprets (snapd/probe/usdt.py compiles it).
//
// bcc rewrites map method calls (map.lookup(), .update()) in the main source file only, so the
// functions here take map values as pointers and leave every map access to the includer.

#ifndef SNAPD_USDT_ARGS
#error "SNAPD_* constants come from snapd/probe/trigger_layout.py"
#endif

#define UREGS_WORDS 21   // struct pt_regs on x86-64 (arch/x86/include/asm/ptrace.h)
#define UREGS_SLOTS 32   // rounded up: a register index is masked, never branched on

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

struct uregs {
    u64 r[UREGS_SLOTS];
};

BPF_ARRAY(usites, struct usite, SNAPD_MAX_USITES);
// Calls between entry and return; LRU, so a thread that never returns (longjmp, exit) costs a
// slot until newer calls push it out. Recursion keeps the innermost entry only.
BPF_TABLE("lru_hash", struct ukey, struct uentry, uinflight, SNAPD_MAX_UINFLIGHT);

// The probed thread's registers, copied out of ctx into `rg` (per-CPU map memory) so that a
// register named by a map value can be indexed: a load from ctx must use a constant offset.
static __always_inline void uregs_fill(struct uregs *rg, struct pt_regs *ctx)
{
    bpf_probe_read_kernel(rg->r, UREGS_WORDS * sizeof(u64), ctx);
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
static __always_inline s64 usdt_arg_value(const struct uregs *rg, const struct usdt_arg *a, u64 ip)
{
    u32 kind = a->kind;
    u64 size = a->size;  // 1, 2, 4 or 8 (snapd.probe.usdt); bounded again for the verifier,
    asm volatile("" : "+r"(size));  // which must see it at most 8 at bpf_probe_read_user
    if (size > 8 || size == 0)
        size = 8;
    if (kind == UA_CONST)
        return usdt_extend((u64)a->disp, size, a->is_signed);
    u64 base = rg->r[(a->reg >> 3) & (UREGS_SLOTS - 1)];
    if (kind == UA_REG)
        return usdt_extend(base, size, a->is_signed);
    u64 addr;
    if (kind == UA_MEM) {
        addr = base + a->disp;
        if (a->scale)
            addr += rg->r[(a->index >> 3) & (UREGS_SLOTS - 1)] * a->scale;
    } else if (kind == UA_IPREL) {
        addr = ip + a->disp;
    } else {
        return 0;
    }
    u64 v = 0;
    bpf_probe_read_user(&v, size, (void *)addr);
    return usdt_extend(v, size, a->is_signed);
}

// arg0..arg5 at a probe: the calling convention's registers for a function entry (System V
// x86-64 ABI: rdi, rsi, rdx, rcx, r8, r9), the site's operands for a USDT probe.
// `rg`: scratch for the registers (USDT only; may be 0 for a function).
static __always_inline void uprobe_args(struct pt_regs *ctx, const struct usite *s, s64 *args,
                                        struct uregs *rg)
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
    if (!rg)
        return;
    uregs_fill(rg, ctx);
    u64 ip = PT_REGS_IP(ctx);  // the probed address (kernel/events/uprobes.c handle_swbp)
    u32 n = s->nargs;
#pragma unroll
    for (int i = 0; i < 6; i++)
        args[i] = i < n ? usdt_arg_value(rg, &s->args[i], ip) : 0;
}

// The key of a call in uinflight: the entry half of a return rule stores {ts, args} there, the
// return half takes them (a return without an entry, attached mid-call, finds nothing).
static __always_inline struct ukey uprobe_call_key(u32 site)
{
    struct ukey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = site};
    return k;
}
