// SPDX-License-Identifier: GPL-2.0-or-later
// Standalone prototype of the uprobe/USDT programs (src/snapd/probe/uprobe.bpf.c) and of the
// "at the event" record (src/snapd/probe/atevent.bpf.c). One entry program and one return
// program serve every attachment: the cookie is the index of its struct usite, and pred[]
// (indexed the same way) holds the one comparison this prototype evaluates where snapd's
// eval_pred would run. A syscall tracepoint program records the same at-event data.
// Built by tests/triggers (test_uprobes.py, test_atevent.py) and bench/uprobe_overhead.py.
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "snapd/probe/uprobe.bpf.c"
#include "snapd/probe/atevent.bpf.c"

struct pred {
    u32 tgid;        // 0: any process
    u32 field;       // FIELD_* (snapd.rules.expr.Field); FIELD_NONE: always true
    u32 op;          // OP_*
    u32 at_event;    // also record registers and stack
    s64 k;
};

struct fire {
    u64 ts;
    u32 pid;
    u32 tid;
    u32 site;
    u32 kind;        // 1 entry, 2 return, 3 syscall
    s64 args[6];
    s64 ret;
    u64 latency;
    u64 ip;
    struct at_event at;
};

struct sys_ctx {
    u64 hdr;
    s32 nr;
    u32 pad;
};

BPF_ARRAY(preds, struct pred, SNAPD_MAX_USITES);
BPF_PERCPU_ARRAY(fire_scratch, struct fire, 1);
BPF_PERCPU_ARRAY(counts, u64, 4);  // 0: entry runs, 1: return runs, 2: fired, 3: returns without entry
BPF_RINGBUF_OUTPUT(fires, 64);

static __always_inline void bump(u32 i)
{
    u64 *c = counts.lookup(&i);
    if (c)
        (*c)++;
}

static __always_inline int holds(const struct pred *p, const s64 *v)
{
    if (p->field == FIELD_NONE)
        return 1;
    s64 a = v[p->field & 31], k = p->k;
    switch (p->op) {
    case OP_EQ: return a == k;
    case OP_NE: return a != k;
    case OP_LT: return a < k;
    case OP_LE: return a <= k;
    case OP_GT: return a > k;
    case OP_GE: return a >= k;
    }
    return 0;
}

static __always_inline void fire(void *regs_src, u32 site, u32 kind, const s64 *v, int want_at,
                                 u64 now, int from_task)
{
    u32 zero = 0;
    struct fire *f = fire_scratch.lookup(&zero);
    if (!f)
        return;
    u64 pt = bpf_get_current_pid_tgid();
    f->ts = now;
    f->pid = pt >> 32;
    f->tid = (u32)pt;
    f->site = site;
    f->kind = kind;
    __builtin_memcpy(f->args, v, 6 * sizeof(s64));
    f->ret = v[FIELD_RET];
    f->latency = v[FIELD_LATENCY];
    f->ip = 0;
    f->at.flags = 0;
    f->at.stack_len = 0;
    u64 size = offsetof(struct fire, at);
    if (want_at) {
        int rc = from_task ? at_regs_current(&f->at) : at_regs_from(&f->at, regs_src);
        if (rc == 0)
            at_stack(&f->at);
        size = at_record_size(offsetof(struct fire, at), &f->at, sizeof(struct fire));
    }
    fires.ringbuf_output(f, size, 0);
    bump(2);
}

struct vals {
    s64 v[32];  // FIELD_*, as snapd's struct fields
};
BPF_PERCPU_ARRAY(vals_scratch, struct vals, 1);

int proto_uprobe(struct pt_regs *ctx)
{
    bump(0);
    u32 idx = bpf_get_attach_cookie(ctx) & (SNAPD_MAX_USITES - 1);
    struct usite *s = usites.lookup(&idx);
    struct pred *p = preds.lookup(&idx);
    if (!s || !p || s->gen == 0)
        return 0;
    u64 pt = bpf_get_current_pid_tgid();
    if (p->tgid && (pt >> 32) != p->tgid)
        return 0;  // a system-wide probe in a process the rule does not target
    u32 zero = 0;
    struct vals *vs = vals_scratch.lookup(&zero);
    if (!vs)
        return 0;
    __builtin_memset(vs->v, 0, sizeof(vs->v));
    uprobe_args(ctx, s, vs->v, ~0u);
    if (s->flags & US_SAVE_ENTRY) {
        u64 now = bpf_ktime_get_ns();
        struct ukey k = uprobe_call_key(idx, bpf_get_current_pid_tgid());
        struct uentry e = {.ts = now};
        __builtin_memcpy(e.args, vs->v, sizeof(e.args));
        uinflight.update(&k, &e);
        return 0;
    }
    vs->v[FIELD_PID] = pt >> 32;
    vs->v[FIELD_TID] = (u32)pt;
    if (holds(p, vs->v))
        fire(ctx, idx, 1, vs->v, p->at_event, bpf_ktime_get_ns(), 0);
    return 0;
}

int proto_uretprobe(struct pt_regs *ctx)
{
    bump(1);
    u32 idx = bpf_get_attach_cookie(ctx) & (SNAPD_MAX_USITES - 1);
    struct usite *s = usites.lookup(&idx);
    struct pred *p = preds.lookup(&idx);
    if (!s || !p || s->gen == 0)
        return 0;
    u64 pt = bpf_get_current_pid_tgid();
    if (p->tgid && (pt >> 32) != p->tgid)
        return 0;
    u32 zero = 0;
    struct vals *vs = vals_scratch.lookup(&zero);
    if (!vs)
        return 0;
    __builtin_memset(vs->v, 0, sizeof(vs->v));
    u64 now = bpf_ktime_get_ns();
    struct ukey k = uprobe_call_key(idx, bpf_get_current_pid_tgid());
    struct uentry *e = uinflight.lookup(&k);
    if (!e) {
        bump(3);
        return 0;
    }
    u64 start = e->ts;
    __builtin_memcpy(vs->v, e->args, sizeof(e->args));
    uinflight.delete(&k);
    vs->v[FIELD_RET] = PT_REGS_RC(ctx);
    vs->v[FIELD_LATENCY] = now - start;
    vs->v[FIELD_PID] = pt >> 32;
    vs->v[FIELD_TID] = (u32)pt;
    if (holds(p, vs->v))
        fire(ctx, idx, 2, vs->v, p->at_event, now, 0);
    return 0;
}

// The at-event record of a syscall rule: pred[0] says which process.
int proto_sys_enter(struct sys_ctx *ctx)
{
    u32 zero = 0;
    struct pred *p = preds.lookup(&zero);
    if (!p || (bpf_get_current_pid_tgid() >> 32) != p->tgid)
        return 0;
    struct vals *vs = vals_scratch.lookup(&zero);
    if (!vs)
        return 0;
    __builtin_memset(vs->v, 0, sizeof(vs->v));
    bpf_probe_read_kernel(vs->v, 6 * sizeof(s64), (void *)ctx + sizeof(struct sys_ctx));
    if (holds(p, vs->v))
        fire(ctx, 0, 3, vs->v, 1, bpf_ktime_get_ns(), 1);
    return 0;
}
