// SPDX-License-Identifier: GPL-2.0-or-later
// Standalone prototype of the signal trigger (src/snapd/probe/signal.bpf.c): for one process
// (cfg.tgid), signal_generate records the sender and signal_deliver reports the delivery and,
// with cfg.stop, sends SIGSTOP when a handler of the target's is about to run.
// Built by tests/triggers/test_signal.py.
#include <uapi/linux/ptrace.h>
#include "snapd/probe/signal.bpf.c"

struct cfg {
    u32 tgid;
    u32 stop;              // 1: SIGSTOP when a handler will run; 2: try it whatever the action
    u64 sigmask;           // bit sig-1
};

struct srec {
    u64 ts;
    u32 kind;              // 1 generate (sender's context), 2 deliver (target's context)
    u32 sig;
    s32 result;
    s32 code;
    u32 cur_pid;           // current: the sender at generate, the target at deliver
    u32 cur_tid;
    u32 target;            // generate: the target thread; deliver: = cur_tid
    u32 disp;              // deliver: SIG_DISP_*
    u64 sa_handler;
    s32 stop_rc;           // deliver: bpf_send_signal's return (1: not tried)
    u32 sender;            // deliver: the sender recorded at generate (0: none)
    char comm[16];         // generate: the target's; deliver: the sender's
};

BPF_ARRAY(cfgmap, struct cfg, 1);
BPF_HASH(senders, struct sig_key, struct sig_sender, 1024);
BPF_RINGBUF_OUTPUT(srecs, 16);

TRACEPOINT_PROBE(signal, signal_generate)
{
    u32 zero = 0;
    struct cfg *c = cfgmap.lookup(&zero);
    // the prototype's victims are single-threaded: the target thread is the process
    if (!c || c->tgid == 0 || (u32)args->pid != c->tgid || !(c->sigmask & sig_bit(args->sig)))
        return 0;
    u64 pt = bpf_get_current_pid_tgid();
    struct sig_key k = {.tgid = c->tgid, .sig = args->sig};
    struct sig_sender s = {};
    s.ts = bpf_ktime_get_ns();
    s.pid = pt >> 32;
    s.tid = (u32)pt;
    s.uid = (u32)bpf_get_current_uid_gid();
    s.code = args->code;
    s.result = args->result;
    bpf_get_current_comm(s.comm, sizeof(s.comm));
    senders.update(&k, &s);
    struct srec *r = srecs.ringbuf_reserve(sizeof(struct srec));
    if (!r)
        return 0;
    __builtin_memset(r, 0, sizeof(*r));
    r->ts = s.ts;
    r->kind = 1;
    r->sig = args->sig;
    r->result = args->result;
    r->code = args->code;
    r->cur_pid = s.pid;
    r->cur_tid = s.tid;
    r->target = args->pid;
    r->stop_rc = 1;
    __builtin_memcpy(r->comm, args->comm, sizeof(r->comm));
    srecs.ringbuf_submit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(signal, signal_deliver)
{
    u32 zero = 0;
    struct cfg *c = cfgmap.lookup(&zero);
    u64 pt = bpf_get_current_pid_tgid();
    if (!c || c->tgid == 0 || (pt >> 32) != c->tgid)
        return 0;
    u32 sig = args->sig;
    // a fatal signal arrives as SIGKILL (complete_signal turned it into a group exit): report
    // it whatever the rule's signals, it is the end of the target
    if (!(c->sigmask & sig_bit(sig)) && sig != SIG_KILL)
        return 0;
    struct srec *r = srecs.ringbuf_reserve(sizeof(struct srec));
    if (!r)
        return 0;
    __builtin_memset(r, 0, sizeof(*r));
    r->ts = bpf_ktime_get_ns();
    r->kind = 2;
    r->sig = sig;
    r->code = args->code;
    r->cur_pid = pt >> 32;
    r->cur_tid = (u32)pt;
    r->target = (u32)pt;
    r->sa_handler = args->sa_handler;
    r->disp = sig_disposition(args->sa_handler);
    r->stop_rc = 1;
    struct sig_key k = {.tgid = c->tgid, .sig = sig};
    struct sig_sender *s = senders.lookup(&k);
    if (s) {
        r->sender = s->pid;
        __builtin_memcpy(r->comm, s->comm, sizeof(r->comm));
        senders.delete(&k);
    }
    if ((c->stop == 1 && sig_can_stop(sig, args->sa_handler)) || c->stop == 2)
        r->stop_rc = bpf_send_signal(SIG_STOP);
    srecs.ringbuf_submit(r, 0);
    return 0;
}
