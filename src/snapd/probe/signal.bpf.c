// SPDX-License-Identifier: GPL-2.0-or-later
//
// The `signal` trigger: a target is sent one of the rule's signals.
//
// Two tracepoints see a signal (include/trace/events/signal.h, kernel/signal.c):
//   signal:signal_generate  in the SENDER's context, at the end of __send_signal_locked(): the
//                           signal is queued (or ignored: result TRACE_SIGNAL_IGNORED) and
//                           complete_signal() has already run, so for a fatal default action
//                           SIGNAL_GROUP_EXIT is set and every thread has SIGKILL pending.
//   signal:signal_deliver   in the TARGET's context, in get_signal() with the siglock held,
//                           after the signal was dequeued and before its action: a handler's
//                           frame is set up after get_signal() returns (handle_signal); a fatal
//                           default action is do_coredump()/do_group_exit() right after.
// bpf_send_signal() acts on current only, so only signal_deliver can halt the target: its
// SIGSTOP is queued from irq_work (irqs are off under the siglock) and taken by the next pass of
// the exit-to-user loop, after the handler frame was pushed: the target stops at its handler's
// first instruction, no instruction of it run. A fatal default action gives no such pass, and a
// signal the target ignores is never delivered. docs/triggers-design.md has the whole picture.
//
// signal_generate keeps who sent what (struct sig_sender, keyed by target tgid and signal) so
// that the delivery event can name the sender.

#define SIG_KILL 9
#define SIG_STOP 19

enum sig_disp {
    SIG_DISP_DEFAULT = 0,  // SIG_DFL: the kernel's default action (fatal for most signals)
    SIG_DISP_IGNORE = 1,   // SIG_IGN
    SIG_DISP_HANDLER = 2,  // a function of the target's
};

struct sig_key {
    u32 tgid;
    u32 sig;
};

struct sig_sender {
    u64 ts;
    u32 pid;               // the sender's tgid (0: the kernel, e.g. the OOM killer or a fault)
    u32 tid;
    u32 uid;
    s32 code;              // si_code: SI_USER (kill), SI_TKILL (tgkill), SI_KERNEL, ...
    s32 result;            // TRACE_SIGNAL_DELIVERED 0, _IGNORED 1, _ALREADY_PENDING 2, ...
    u32 pad;
    char comm[16];
};

static __always_inline u32 sig_disposition(u64 sa_handler)
{
    return sa_handler == 0 ? SIG_DISP_DEFAULT : sa_handler == 1 ? SIG_DISP_IGNORE : SIG_DISP_HANDLER;
}

// Whether stop: kernel can halt the target for this delivery: only before a handler of its own
// runs. SIGKILL and SIGSTOP cannot be caught; for a default action the process is dying (or,
// for SIGCHLD/SIGWINCH-like signals, nothing happens that a halt would precede).
static __always_inline int sig_can_stop(u32 sig, u64 sa_handler)
{
    return sig != SIG_KILL && sig != SIG_STOP && sig_disposition(sa_handler) == SIG_DISP_HANDLER;
}

static __always_inline u64 sig_bit(u32 sig)
{
    return sig >= 1 && sig <= 64 ? 1ULL << ((sig - 1) & 63) : 0;
}
