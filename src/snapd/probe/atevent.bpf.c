// SPDX-License-Identifier: GPL-2.0-or-later
//
// "At the event" (issue 11): the firing thread's user registers and the top of its user stack,
// recorded by a probe that runs in the target (syscall tracepoint, uprobe, USDT) so that the
// report can unwind the stack as it was at the event, not at the later snapshot. Only a firing
// rule calls these: unrelated processes never reach them.
//
// Registers are struct user_regs_struct (arch/x86/include/asm/user_64.h), whose first 21 words
// are struct pt_regs in the same order; the last six (fs_base, gs_base, ds, es, fs, gs) are left
// 0 here (they live in task_struct.thread, whose layout bcc's headers may not match on this
// kernel) and are filled by the daemon from the thread's registers in the snapshot: a thread's
// fs_base does not change once glibc has set it. The stack is copied from rsp upward, page by
// page (bpf_probe_read_user fails as a whole on any missing byte), so a stack shorter than
// SNAPD_EVENT_STACK still yields what is mapped.

#ifndef SNAPD_EVENT_STACK
#error "SNAPD_* constants come from snapd/probe/trigger_layout.py"
#endif

#define AT_REGS 27        // struct user_regs_struct words
#define AT_PT_REGS 21     // of which struct pt_regs
#define AT_PAGE 4096
#define AT_RSP 19         // index of rsp in both

struct at_event {
    u64 regs[AT_REGS];
    u32 stack_len;        // bytes of stack[] that hold the stack from regs[AT_RSP] up
    u32 flags;            // AT_F_*
    // one page of slack: the chunked copy below writes at most SNAPD_EVENT_STACK bytes, but the
    // verifier bounds each chunk's offset and size separately
    u8 stack[SNAPD_EVENT_STACK + AT_PAGE];
};

#define AT_F_REGS 1       // regs were read
#define AT_F_CUT 2        // the copy is full: the stack may go on above it
#define AT_F_HOLE 4       // a page inside the copy could not be read and is zeros

// A record holding a struct at_event (last) is built in per-CPU map memory, not on the 512-byte
// BPF stack, and handed over with bpf_ringbuf_output(rec, offsetof(rec, at) + at_size(&rec->at)):
// a fixed-size ring buffer reservation would cost 20 KiB per event whatever the stack held.

// Registers of a uprobe: ctx is the user pt_regs.
static __always_inline int at_regs_from(struct at_event *a, const void *pt_regs)
{
    __builtin_memset(&a->regs[AT_PT_REGS], 0, (AT_REGS - AT_PT_REGS) * sizeof(u64));
    if (bpf_probe_read_kernel(a->regs, AT_PT_REGS * sizeof(u64), pt_regs) != 0)
        return -1;
    a->flags |= AT_F_REGS;
    return 0;
}

// Registers of the current thread from any program running in its context (a syscall
// tracepoint): the user pt_regs saved at kernel entry (bpf_task_pt_regs, Linux 5.15+).
static __always_inline int at_regs_current(struct at_event *a)
{
    struct task_struct *t = bpf_get_current_task_btf();
    void *pt = (void *)bpf_task_pt_regs(t);
    if (!pt)
        return -1;
    return at_regs_from(a, pt);
}

// Up to SNAPD_EVENT_STACK bytes of user stack from regs[AT_RSP], one page at a time. A page that
// cannot be read (never touched, so not present: a large local array; or swapped out) is left
// zero, which bpf_probe_read_user does on failure (kernel/trace/bpf_trace.c), and the copy goes
// on: the frames above it were written, so they are present. Pages that fail at the end are cut
// off (beyond the top of the stack's mapping, or not present).
static __always_inline void at_stack(struct at_event *a)
{
    u64 sp = a->regs[AT_RSP];
    u32 got = 0, good = 0;
    u32 first = AT_PAGE - (u32)(sp & (AT_PAGE - 1));  // 1..4096: to the end of sp's page
    a->stack_len = 0;
#pragma unroll
    for (int i = 0; i <= SNAPD_EVENT_STACK / AT_PAGE; i++) {
        u32 want = i == 0 ? first : AT_PAGE;
        if (got + want > SNAPD_EVENT_STACK)
            want = SNAPD_EVENT_STACK - got;
        if (want == 0)
            break;
        u32 off = got;
        if (off > SNAPD_EVENT_STACK || want > AT_PAGE)
            break;  // cannot happen; tells the verifier off + want <= sizeof(stack)
        got += want;
        if (bpf_probe_read_user(&a->stack[off], want, (void *)(sp + off)) == 0) {
            if (good != off)
                a->flags |= AT_F_HOLE;  // pages before this one are zeros, not the stack
            good = got;
        }
    }
    if (good >= SNAPD_EVENT_STACK)
        a->flags |= AT_F_CUT;  // the stack may go on above the copy
    a->stack_len = good;
}

// Size of a record whose struct at_event `a` starts `header` bytes in and which is `max` bytes
// long: the header, the registers and the stack bytes read. The compiler knows stack_len is
// bounded and drops a plain bound check, which the verifier then misses ("R3 unbounded memory
// access"); the empty asm hides the value from the compiler so the check stays.
static __always_inline u64 at_record_size(u64 header, const struct at_event *a, u64 max)
{
    u64 n = header + offsetof(struct at_event, stack) + a->stack_len;
    asm volatile("" : "+r"(n));
    if (n > max)
        n = max;
    return n;
}
