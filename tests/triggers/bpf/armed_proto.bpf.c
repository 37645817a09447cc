// SPDX-License-Identifier: GPL-2.0-or-later
// Standalone prototype of the tick-then-syscall trigger (src/snapd/probe/armed.bpf.c): one rule
// (slot 0) whose ticks come from a cpu-clock perf event, consumed by the first
// read/write/clock_nanosleep of a process of cfg.tgid, which is stopped there with cfg.stop.
// Built by tests/triggers/test_armed.py.
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "snapd/probe/armed.bpf.c"

struct cfg {
    u32 tgid;
    u32 stop;
};

struct arec {
    u64 ts;
    u64 armed;             // the word taken: generation << 32 | epoch
    u32 pid;
    u32 tid;
    s32 nr;
    s32 stop_rc;
};

struct sys_ctx {
    u64 hdr;
    s32 nr;
    u32 pad;
};

BPF_ARRAY(cfgmap, struct cfg, 1);
BPF_ARRAY(armed, u64, 64);           // per rule slot
BPF_TABLE("lru_hash", struct armed_key, u64, consumed, 4096);
BPF_ARRAY(ticks, u64, 1);            // ticks seen (for the test)
BPF_RINGBUF_OUTPUT(arecs, 16);

int proto_tick(struct bpf_perf_event_data *ctx)
{
    u32 slot = 0;
    u64 *w = armed.lookup(&slot);
    if (w && (*w >> 32) != 0)        // generation 0: no rule loaded
        armed_tick(w);
    u64 *t = ticks.lookup(&slot);
    if (t)
        __sync_fetch_and_add(t, 1);
    return 0;
}

int proto_sys_enter(struct sys_ctx *ctx)
{
    u32 zero = 0;
    struct cfg *c = cfgmap.lookup(&zero);
    u64 pt = bpf_get_current_pid_tgid();
    if (!c || c->tgid == 0 || (pt >> 32) != c->tgid)
        return 0;
    u64 *w = armed.lookup(&zero);
    if (!w || (u32)*w == 0)
        return 0;                    // the common case: not armed, one lookup more
    struct armed_key k = {.slot = 0, .tgid = pt >> 32};
    u64 *done = consumed.lookup(&k);
    if (!done) {
        u64 none = 0;
        consumed.insert(&k, &none);  // BPF_NOEXIST: another thread may have made it
        done = consumed.lookup(&k);
        if (!done)
            return 0;
    }
    if (!armed_take(w, done))
        return 0;
    struct arec *r = arecs.ringbuf_reserve(sizeof(struct arec));
    if (!r)
        return 0;
    r->ts = bpf_ktime_get_ns();
    r->armed = *done;
    r->pid = pt >> 32;
    r->tid = (u32)pt;
    r->nr = ctx->nr;
    r->stop_rc = c->stop ? bpf_send_signal(19) : 1;
    arecs.ringbuf_submit(r, 0);
    return 0;
}
