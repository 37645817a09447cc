// SPDX-License-Identifier: GPL-2.0-or-later
//
// snapd's one BPF program set, shared by every loaded rule.
//
// Nothing in this file comes from a rule: a rule is a row in the `rules` array map, written by
// snapd.probe.probes from validated, typed values. The `when` predicate arrives as a small postfix
// program (struct insn) that eval_pred() interprets with a bounded loop; the constants below are
// passed as -D flags from snapd.probe.layout so Python and C share one definition.
//
// Data flow:
//   sched_process_exec/fork/exit  -> keep `targets` (tgid -> bitmask of rule slots) current,
//                                    and `mine` (what snapd itself created) out of it
//   syscalls:sys_enter_X / exit_X -> target check, mutes, predicate, count/within, ring buffer
//   perf cpu-clock sampler        -> per-process on-CPU share over a sliding window
//   perf cpu-clock ticks          -> `every` timers
//   uprobes (function, usdt)      -> cookie -> usite -> rule: target check, predicate, ring buffer
// Only firings reach user space, through the `events` ring buffer.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include <linux/sched.h>
#ifndef SIGNAL_LIVE_OFF
#include <linux/sched/signal.h>  // struct signal_struct, for the headers' offsetof fallback
#endif

#ifndef SNAPD_MAX_RULES
#error "built by snapd.probe: SNAPD_* constants come from snapd/probe/layout.py"
#endif

// The trigger pieces (types and pure functions: bcc rewrites map calls in this file only).
#include "snapd/probe/uprobe.bpf.c"
#include "snapd/probe/strings.bpf.c"
#include "snapd/probe/signal.bpf.c"
#include "snapd/probe/armed.bpf.c"
#include "snapd/probe/atevent.bpf.c"

// Defined with the string maps at the end of this file (the strings section).
struct fields;
static __always_inline void str_fields(u32 slot, s32 nr, struct fields *f);
// Defined in the every + then section: whether a RF_ARMED rule's syscall takes its tick.
struct rule_cfg;
static __always_inline int armed_ok(u32 slot, const struct rule_cfg *r, u32 tgid);
static __always_inline u64 armed_ticks(u64 mask);

struct insn {
    u8 kind;      // INSN_CMP, INSN_AND, INSN_OR, INSN_NOT
    u8 field;     // FIELD_* for INSN_CMP
    u8 op;        // OP_* for INSN_CMP
    u8 pad[5];
    s64 k;        // the constant of INSN_CMP
};

struct rule_cfg {
    u32 gen;             // 0: slot free; else bumped on every load so stale events are dropped
    u32 flags;           // RF_*
    u32 pid;             // RF_PID: tgid must equal it
    u32 uid;             // RF_UID: real uid must equal it
    u32 cg_level;        // RF_CGROUP: ancestor level of cg_id
    u32 count;           // fire on the count-th match (0 and 1: every match)
    u64 cg_id;
    u64 exe_hash[2];     // RF_EXE: FNV-1a of the exec filename, literal and resolved
    u64 within_ns;       // 0: no window (plain count)
    u64 cpu_bucket_ns;   // RF_CPU: window / CPU_BUCKETS
    u64 cpu_threshold;   // RF_CPU: samples within the window that fire
    u32 n_insns;
    u32 glob_len;        // RF_COMM: accept state (pattern length, '*' runs collapsed)
    u32 glob_star;       // RF_COMM: bit p set when pattern[p] == '*'
    u32 reads;           // bit 1 << FIELD_x per field the predicate reads (all 22 fit)
    struct insn insns[SNAPD_MAX_INSNS];
    u32 glob_chars[256]; // RF_COMM: bit p set when pattern[p] is that byte or '?'
};

struct sysmask {
    u64 enter;           // rules evaluated at sys_enter of this syscall
    u64 exit;            // rules evaluated at sys_exit (predicate uses ret/errno/latency)
    // Per argument: how the kernel reads the register (include/linux/syscalls.h casts each to
    // its declared type): bits 0-5 the shift that keeps the type's width (0, 32, 48), bit 7 set
    // when the type is signed. The tracepoint records the raw 64-bit registers.
    u8 argx[8];
};

// A rule's mutes, read by one lookup per hit (snapd.probe.mutes writes them).
struct mute {
    u64 until;           // until when its events are useless (max_cores reached: forever); 0: never
    u64 pmax;            // the latest `until` of its rows in pmutes (0: it has none): past it no
                         // row can mute the rule, and that lookup (a hash) is skipped
};

// Until when (bpf_ktime_get_ns) a rule's events are useless for one process (min_interval).
struct pmute {
    u64 until;
    u32 gen;             // the rule_cfg gen it was set for: a reused slot starts unmuted
    u32 pad;
};

struct inflight {
    u64 ts;
    u64 mask;
    s64 args[6];
};

struct wkey {
    u32 slot;
    u32 tgid;
};

struct wstate {
    u32 gen;
    u32 head;
    u32 n;
    u32 pad;
    u64 ts[SNAPD_WIN_SLOTS];
};

struct cpustate {
    u32 gen;
    u32 pad;
    u64 epoch[SNAPD_CPU_BUCKETS];
    u64 cnt[SNAPD_CPU_BUCKETS];
};

struct event {
    u64 ts;
    s64 args[6];
    s64 ret;
    u64 value;
    u32 pid;
    u32 tid;
    u32 slot;
    u32 gen;
    s32 nr;
    u32 flags;           // EF_*
    char comm[16];
    s64 args_more[6];    // a USDT probe's operands past the sixth (FIELD_ARG6..FIELD_ARG11)
};

// The first 16 bytes of a syscalls:sys_{enter,exit}_* record; the rest (args / ret) is read with
// bpf_probe_read_kernel so that the program's ctx footprint fits every syscall's format
// (kernel/events/core.c perf_event_set_bpf_prog rejects programs reading past a format's end).
struct sys_ctx {
    u64 hdr;
    s32 nr;
    u32 pad;
};

BPF_ARRAY(rules, struct rule_cfg, SNAPD_MAX_RULES);
BPF_HASH(targets, u32, u64, SNAPD_MAX_TARGETS);
BPF_HASH(sysmasks, u32, struct sysmask, 1024);
BPF_HASH(ticks, u64, u64, SNAPD_MAX_RULES);
BPF_ARRAY(globals, u64, GLOBAL_NR);
BPF_PERCPU_ARRAY(counters, u64, CTR_NR);
// Checked before a rule's predicate, so a rule that has spent its budget costs a map lookup per
// event, not a firing.
BPF_ARRAY(mutes, struct mute, SNAPD_MAX_RULES);
BPF_PERCPU_ARRAY(muted_by_rule, u64, SNAPD_MAX_RULES);  // CTR_MUTED per slot, for ctl rules
BPF_TABLE("lru_hash", struct wkey, struct pmute, pmutes, SNAPD_MAX_WINDOWS);
// Every process stop: kernel stopped (tgid -> CLOCK_BOOTTIME of the stop), until the daemon has
// resumed it or taken it over. Pinned in bpffs by snapd.probe, so a restarted daemon resumes
// exactly these: a process with that pid that started before the stop is the one stopped (two
// live processes never share a pid); a recycled pid started after it.
BPF_HASH(stopped, u32, u64, SNAPD_MAX_STOPPED);
// Tasks snapd created, and what they created (tid -> 1): never targets. The daemon's and the
// dumper's own tgids are in `globals`.
BPF_TABLE("lru_hash", u32, u8, mine, SNAPD_MAX_MINE);
// Threads inside a fork snapshot's injected clone (tid -> 1), from its entry to its exit.
BPF_HASH(injecting, u32, u8, 256);
BPF_TABLE("lru_hash", u32, struct inflight, inflight, SNAPD_MAX_INFLIGHT);
BPF_TABLE("lru_hash", struct wkey, struct wstate, windows, SNAPD_MAX_WINDOWS);
BPF_TABLE("lru_hash", struct wkey, struct cpustate, cpuwin, SNAPD_MAX_WINDOWS);
BPF_RINGBUF_OUTPUT(events, SNAPD_RINGBUF_PAGES);
// Per-CPU scratch space for values too big for the 512-byte BPF stack.
struct path_buf {
    char s[SNAPD_PATH_MAX];
};
BPF_PERCPU_ARRAY(scratch_path, struct path_buf, 1);
BPF_PERCPU_ARRAY(scratch_wstate, struct wstate, 1);
BPF_PERCPU_ARRAY(scratch_cpu, struct cpustate, 1);
BPF_PERCPU_ARRAY(scratch_u64, u64, 1);

// Returns v, but as a value the verifier cannot know. A predicate's result is one of 2^n
// constants along 2^n paths; branching on it directly would make the verifier keep every path
// apart (kernel/bpf/verifier.c: a branch marks its register "precise", and states differing in a
// precise register are never pruned). Passing it through map memory ends that tracking.
static __always_inline u64 opaque(u64 v)
{
    u32 zero = 0;
    u64 *p = scratch_u64.lookup(&zero);
    if (!p)
        return 0;
    *(volatile u64 *)p = v;
    return *(volatile u64 *)p;
}

static __always_inline void count_up(u32 which)
{
    u64 *c = counters.lookup(&which);
    if (c)
        (*c)++;
}

// Values a predicate may read, gathered once per syscall event into per-CPU map memory and
// indexed by FIELD_* (a masked index into a map value needs no branch).
struct fields {
    s64 v[32];  // FIELD_* (snapd.rules.expr.Field: 22 of them), indexed through a mask of 31
};
BPF_PERCPU_ARRAY(scratch_fields, struct fields, 1);

// Hides x from clang's pattern matching, which would turn the arithmetic below back into
// compare-and-branch (BPF has no setcc or select instruction).
#define HIDE(x) asm volatile("" : "+r"(x))

// 1 when x == 0, without a branch: (x | -x) has its sign bit set exactly when x != 0. The
// operands are hidden too: clang recognises (a ^ b | -(a ^ b)) >> 63 as a != b, and knowing that
// c is a byte it turns is_less(0, c) into c != 0, each a branch; branches in the rule loop of
// snapd_classify were more paths than the 6.1 verifier's budget of 1M instructions.
static __always_inline u64 is_zero(u64 x)
{
    HIDE(x);
    u64 t = x | -x;
    HIDE(t);
    u64 nz = t >> 63;
    HIDE(nz);
    return nz ^ 1;
}

// Signed a < b without a branch (and without overflow: Hacker's Delight 2-12).
static __always_inline u64 is_less(s64 a, s64 b)
{
    HIDE(a);
    HIDE(b);
    u64 d = (u64)a - (u64)b;
    u64 t = d ^ (((u64)a ^ (u64)b) & (d ^ (u64)a));
    HIDE(t);
    u64 lt = t >> 63;
    HIDE(lt);
    return lt;
}

// The predicate interpreter is branch-free apart from its bounded loop, so the verifier walks one
// path per instruction instead of one per (field, operator, outcome) combination.
// One step of the predicate: instruction `in` applied to the stack of truth values `st`.
// The outcome (0 or 1) of compare step `in`: `field OP k`.
static __always_inline u64 cmp_bit(const struct insn *in, const struct fields *f)
{
    u64 op = in->op;
    s64 a = f->v[in->field & 31], k = in->k;
    HIDE(op);
    u64 eq = is_zero((u64)(a ^ k));
    u64 lt = is_less(a, k);
    // bit OP_x of `res` is the outcome of `a OP_x k`
    u64 res = (eq << OP_EQ) | ((eq ^ 1) << OP_NE) | (lt << OP_LT) | ((lt | eq) << OP_LE) |
              (((lt | eq) ^ 1) << OP_GT) | ((lt ^ 1) << OP_GE);
    return (res >> (op & 7)) & 1;
}

static __always_inline u64 pred_apply(u64 st, const struct insn *in, const struct fields *f)
{
    u64 kind = in->kind;
    HIDE(kind);
    u64 cmp = (st << 1) | cmp_bit(in, f);
    u64 top = st & 1, next = (st >> 1) & 1;
    u64 conj = ((st >> 2) << 1) | (top & next);
    u64 disj = ((st >> 2) << 1) | (top | next);
    u64 neg = st ^ 1;
    return (cmp & -is_zero(kind - INSN_CMP)) | (conj & -is_zero(kind - INSN_AND)) |
           (disj & -is_zero(kind - INSN_OR)) | (neg & -is_zero(kind - INSN_NOT));
}

// The predicate's outcome: its steps over the event's fields, PRED_CHUNK steps at a time, as
// many chunks as the predicate needs (a one-compare predicate: one chunk, not all
// SNAPD_MAX_INSNS steps, ~110 ns less per event: bench/probe_overhead.py's uprobe rows, where the
// trap is the only other cost). Steps past the predicate's end inside its last chunk leave `st`
// as it is. The loop exits per chunk, not per step: a `break` after each step gave the verifier
// one path out of the loop per length, each walked through the rest of the program, more than
// the 6.1 verifier's budget of 1M instructions (E2BIG); four exits cost less than the 16 steps'
// worth of states of a constant-length loop (snapd_eval on 6.18: 478k verified instructions, not
// 613k). The index is masked, and HIDE keeps the mask: knowing j < SNAPD_MAX_INSNS, clang would
// step a pointer instead, which the 6.1 verifier cannot bound ("invalid access to map value").
// (bpf_loop() would run exactly n steps, but bcc 0.26 leaves a callback unrelocated: "R2
// type=scalar expected=func".)
#define PRED_CHUNK 4
static __always_inline int eval_pred(const struct rule_cfg *r, const struct fields *f)
{
    u32 n = r->n_insns;
    if (n == 0)
        return 1;
    // One step is one compare (`arg0 == K`, `arg0 > 1GiB`: most rules): its outcome alone,
    // without the chunk's other three steps (a uprobe hit that passes nothing is mostly this)
    if (n == 1)
        return cmp_bit(&r->insns[0], f);
    u64 st = 0;
#pragma clang loop unroll(disable)
    for (u32 c = 0; c < SNAPD_MAX_INSNS / PRED_CHUNK; c++) {
        if (c * PRED_CHUNK >= n)
            break;
#pragma unroll
        for (u32 i = 0; i < PRED_CHUNK; i++) {
            u32 j = c * PRED_CHUNK + i;
            u32 idx = j;
            HIDE(idx);
            u64 out = pred_apply(st, &r->insns[idx & (SNAPD_MAX_INSNS - 1)], f);
            u64 live = is_less(j, n);
            st = (out & -live) | (st & (live - 1));
        }
    }
    return opaque(st) & 1;
}

// count/within: a ring of the last `count` match times per (rule, process); it fires when the
// oldest of them is no more than `within` ago, then starts over.
static __always_inline int window_hit(u32 slot, const struct rule_cfg *r, u32 tgid, u64 now)
{
    u32 count = r->count;
    if (count <= 1)
        return 1;
    struct wkey k = {.slot = slot, .tgid = tgid};
    struct wstate *w = windows.lookup(&k);
    if (!w || w->gen != r->gen) {
        struct wstate *z;
        u32 zero = 0;
        // A wstate is too big for the BPF stack: start from a per-CPU scratch slot. Its ts[] may
        // hold old times; none is read before `count` new ones are written (n starts at 0).
        z = (struct wstate *)scratch_wstate.lookup(&zero);
        if (!z)
            return 0;
        z->gen = r->gen;
        z->head = 0;
        z->n = 0;
        windows.update(&k, z);
        w = windows.lookup(&k);
        if (!w)
            return 0;
    }
    if (r->within_ns == 0) {
        u32 n = w->n + 1;
        if (n < count) {
            w->n = n;
            return 0;
        }
        w->n = 0;
        return 1;
    }
    u32 idx = w->head;
    if (idx >= count || idx >= SNAPD_WIN_SLOTS)
        idx = 0;
    w->ts[idx & (SNAPD_WIN_SLOTS - 1)] = now;
    u32 next = idx + 1;
    if (next >= count)
        next = 0;
    w->head = next;
    if (w->n < count)
        w->n++;
    if (w->n < count)
        return 0;
    u64 oldest = w->ts[next & (SNAPD_WIN_SLOTS - 1)];
    if (now - oldest > r->within_ns)
        return 0;
    w->n = 0;
    return 1;
}

// Is the current thread traced (gdb, strace, another snapd: they trace every thread)? Then
// stop: kernel must not SIGSTOP it: the signal goes to the tracer as a signal-delivery-stop
// (ptrace(2)), and a tracer that does not pass it on leaves the target halted for good, by our
// doing; the daemon cannot take an already traced target over anyway.
// The offsets are the running kernel's (snapd.sys.btf, passed by snapd.probe.layout): the headers
// bcc compiles against may be another kernel's, whose task_struct has another layout.
#ifndef TASK_PTRACE_OFF
#define TASK_PTRACE_OFF offsetof(struct task_struct, ptrace)
#define TASK_GROUP_LEADER_OFF offsetof(struct task_struct, group_leader)
#endif
#ifndef TASK_SIGNAL_OFF
#define TASK_SIGNAL_OFF offsetof(struct task_struct, signal)
#define SIGNAL_LIVE_OFF offsetof(struct signal_struct, live)
#endif
static __always_inline int current_traced(void)
{
    char *t = (char *)bpf_get_current_task();
    char *leader = NULL;
    unsigned int ptrace = 0;
    bpf_probe_read_kernel(&ptrace, sizeof(ptrace), t + TASK_PTRACE_OFF);
    if (ptrace)
        return 1;
    bpf_probe_read_kernel(&leader, sizeof(leader), t + TASK_GROUP_LEADER_OFF);
    if (!leader)
        return 0;
    bpf_probe_read_kernel(&ptrace, sizeof(ptrace), leader + TASK_PTRACE_OFF);
    return ptrace != 0;
}

static __always_inline u64 global(u32 which)
{
    u64 *v = globals.lookup(&which);
    return v ? *v : 0;
}

// Is tgid snapd itself (the daemon, its dumper) or something snapd created?
static __always_inline int is_own(u32 tgid)
{
    u64 self = global(GLOBAL_SELF), dumper = global(GLOBAL_DUMPER);
    if ((self && tgid == self) || (dumper && tgid == dumper))
        return 1;
    return mine.lookup(&tgid) != 0;
}

// Is rule `slot` muted (for `tgid`)? The clock is read into *now only where a mute exists to
// compare it with (0: not read yet): most hits of most rules meet no mute.
static __always_inline int is_muted(u32 slot, const struct rule_cfg *r, u32 tgid, u64 *now)
{
    struct mute *mu = mutes.lookup(&slot);
    if (!mu)
        return 0;
    u64 until = mu->until, pm_until = mu->pmax;
    if (!until && !pm_until)
        return 0;
    if (!*now)
        *now = bpf_ktime_get_ns();
    if (*now < until)
        return 1;
    if (*now >= pm_until)
        return 0;
    struct wkey k = {.slot = slot, .tgid = tgid};
    struct pmute *pm = pmutes.lookup(&k);
    return pm && pm->gen == r->gen && *now < pm->until;
}

static __always_inline int muted(u32 slot, const struct rule_cfg *r, u32 tgid, u64 *now)
{
    if (!is_muted(slot, r, tgid, now))
        return 0;
    count_up(CTR_MUTED);
    u64 *n = muted_by_rule.lookup(&slot);
    if (n)
        (*n)++;
    return 1;
}

// A record that is not a rule's event (EF_TICK, EF_NEW_TARGET): no rule slot, no arguments;
// `pid` (and tid), `value` and `ret` as the flag defines them (snapd.probe.probes._take).
static __always_inline void emit_record(u32 flags, u32 pid, u64 value, s64 ret)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count_up(CTR_DROPPED);
        return;
    }
    __builtin_memset(e->args, 0, sizeof(e->args));
    __builtin_memset(e->comm, 0, sizeof(e->comm));
    __builtin_memset(e->args_more, 0, sizeof(e->args_more));
    e->pid = e->tid = pid;
    e->slot = e->gen = 0;
    e->ts = bpf_ktime_get_ns();
    e->value = value;
    e->ret = ret;
    e->nr = -1;
    e->flags = flags;
    events.ringbuf_submit(e, 0);
}

static __always_inline void emit(u32 slot, const struct rule_cfg *r, u64 pid_tgid, s32 nr,
                                 const struct fields *f, u64 now, u32 flags, u64 value)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count_up(CTR_DROPPED);
        return;
    }
    e->ts = now;
    __builtin_memcpy(e->args, f->v, sizeof(e->args));
    __builtin_memcpy(e->args_more, &f->v[FIELD_ARG6], sizeof(e->args_more));
    e->ret = f->v[FIELD_RET];
    e->value = value;
    e->pid = pid_tgid >> 32;
    e->tid = (u32)pid_tgid;
    e->slot = slot;
    e->gen = r->gen;
    e->nr = nr;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    if ((r->flags & RF_STOP_KERNEL) && !current_traced()) {
        // DTrace stop(): the whole thread group stops when this thread returns to user mode,
        // so /proc/PID/syscall still names this syscall (kernel/signal.c do_signal_stop).
        if (bpf_send_signal(SIGNAL_STOP) == 0) {
            flags |= EF_STOPPED;
            // The moment, on the clock of /proc/PID/stat's starttime (boot-based, fs/proc/
            // array.c): what tells this process from one that got its pid later. (Reading the
            // task's own start time would need task_struct offsets, which the kernel headers
            // bcc compiles against need not match.)
            u64 when = bpf_ktime_get_boot_ns();
            u32 tgid = pid_tgid >> 32;
            stopped.update(&tgid, &when);
        }
    }
    e->flags = flags;
    events.ringbuf_submit(e, 0);
    count_up(CTR_FIRED);
}

// One syscall event's evaluation state, handed from the sys_enter/sys_exit program to
// snapd_eval, which takes one rule per (tail) call: verifying one rule body once instead of a
// loop over every slot keeps the program far below the verifier's 1M-instruction budget.
struct evalstate {
    u64 mask;            // rules still to evaluate
    u64 pid_tgid;
    u64 now;
    s32 nr;
    u32 flags;
};
BPF_PERCPU_ARRAY(scratch_eval, struct evalstate, 1);
BPF_PROG_ARRAY(evalprog, 1);

static __always_inline int eval_next(struct sys_ctx *ctx, bool strings)
{
    u32 zero = 0;
    struct evalstate *es = scratch_eval.lookup(&zero);
    struct fields *f = scratch_fields.lookup(&zero);
    if (!es || !f)
        return 0;
    u64 mask = es->mask;
    if (!mask)
        return 0;
    u64 low = mask & -mask;
    es->mask = mask & (mask - 1);
    u32 slot = __builtin_popcountll(low - 1) & (SNAPD_MAX_RULES - 1);
    struct rule_cfg *r = rules.lookup(&slot);
    if (r && r->gen != 0) {
        u64 pid_tgid = es->pid_tgid, now = es->now;
        if (!muted(slot, r, pid_tgid >> 32, &now)) {
            count_up(CTR_SEEN);
            if (strings)
                str_fields(slot, es->nr, f);  // this rule's string comparisons, as fields str0..3
            if (eval_pred(r, f) && armed_ok(slot, r, pid_tgid >> 32) &&
                window_hit(slot, r, pid_tgid >> 32, now))
                emit(slot, r, pid_tgid, es->nr, f, now, es->flags, 0);
        }
    }
    // At most 33 tail calls per event (include/linux/bpf.h MAX_TAIL_CALL_CNT): more rules
    // than that on one syscall of one process are not evaluated; snapd.probe refuses them.
    if (es->mask)
        evalprog.call(ctx, 0);
    return 0;
}

// Two entries, one compile: snapd.probe.build loads snapd_eval, and snapd_eval_plain where the
// kernel's verifier refuses the string matcher (6.1: docs/kernels.md). Compiling the program set
// twice instead cost a daemon start on such a kernel a second compile.
int snapd_eval(struct sys_ctx *ctx)
{
    return eval_next(ctx, true);
}

int snapd_eval_plain(struct sys_ctx *ctx)
{
    return eval_next(ctx, false);
}

static __always_inline void eval_rules(struct sys_ctx *ctx, u64 mask, u64 pid_tgid, s32 nr,
                                       u64 now, u32 flags)
{
    u32 zero = 0;
    struct evalstate *es = scratch_eval.lookup(&zero);
    if (!es)
        return;
    es->mask = mask;
    es->pid_tgid = pid_tgid;
    es->now = now;
    es->nr = nr;
    es->flags = flags;
    evalprog.call(ctx, 0);
}

// A register as the syscall's declared argument type reads it (struct sysmask argx), without
// a branch: shift the value's width to the top, then back, arithmetically for signed types.
static __always_inline s64 extend(s64 v, u8 x)
{
    u64 sh = x & 63;
    u64 neg = -(u64)(x >> 7);
    u64 up = (u64)v << sh;
    HIDE(up);
    u64 sx = (u64)((s64)up >> sh);
    u64 zx = up >> sh;
    return (s64)((sx & neg) | (zx & ~neg));
}

// The fields every event has besides its arguments: who it is (pid, tid, uid).
static __always_inline void fields_ids(struct fields *f, u64 pid_tgid)
{
    f->v[FIELD_PID] = pid_tgid >> 32;
    f->v[FIELD_TID] = (u32)pid_tgid;
    f->v[FIELD_UID] = (u32)bpf_get_current_uid_gid();
}

// The rules of the GLOBAL_`which` mask that select the current process (0: none, or not a
// target).
static __always_inline u64 target_rules(u32 tgid, u32 which)
{
    u64 *tm = targets.lookup(&tgid);
    return tm ? *tm & global(which) : 0;
}

int snapd_sys_enter(struct sys_ctx *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    u64 *tm = targets.lookup(&tgid);
    if (!tm)
        return 0;
    u32 nr = ctx->nr;
    struct sysmask *sm = sysmasks.lookup(&nr);
    if (!sm)
        return 0;
    u64 en = *tm & sm->enter, ex = *tm & sm->exit;
    if (!(en | ex))
        return 0;
    u64 now = bpf_ktime_get_ns();
    s64 a[6] = {};
    bpf_probe_read_kernel(a, sizeof(a), (void *)ctx + sizeof(struct sys_ctx));
#pragma unroll
    for (int i = 0; i < 6; i++)
        a[i] = extend(a[i], sm->argx[i]);
    if (ex) {
        struct inflight in = {.ts = now, .mask = ex};
        __builtin_memcpy(in.args, a, sizeof(a));
        u32 tid = (u32)pid_tgid;
        inflight.update(&tid, &in);
    }
    if (!en)
        return 0;
    u32 zero = 0;
    struct fields *f = scratch_fields.lookup(&zero);
    if (!f)
        return 0;
    __builtin_memcpy(f->v, a, sizeof(a));
    f->v[FIELD_RET] = 0;
    f->v[FIELD_ERRNO] = 0;
    f->v[FIELD_LATENCY] = 0;
    fields_ids(f, pid_tgid);
    eval_rules(ctx, en, pid_tgid, nr, now, 0);
    return 0;
}

// `then: any` (every + then, any syscall): one program on raw_syscalls:sys_enter rather than
// one attachment per syscall tracepoint (~360: detaching them cost a synchronize_rcu each,
// seconds at shutdown). Its record (include/trace/events/syscalls.h sys_enter: long id, unsigned
// long args[6]) has the layout of a syscalls:sys_enter_X record, the id's low half where __syscall_nr
// is, little-endian. Only GLOBAL_ANY_RULES are evaluated here: those rules are in no sysmask, so
// a syscall a listed rule also traces is evaluated once per rule. No `when`: registers raw.
int snapd_raw_enter(struct sys_ctx *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 en = target_rules(pid_tgid >> 32, GLOBAL_ANY_RULES);
    if (!en)
        return 0;
    u32 zero = 0;
    struct fields *f = scratch_fields.lookup(&zero);
    if (!f)
        return 0;
    s64 a[6] = {};
    bpf_probe_read_kernel(a, sizeof(a), (void *)ctx + sizeof(struct sys_ctx));
    __builtin_memcpy(f->v, a, sizeof(a));
    f->v[FIELD_RET] = 0;
    f->v[FIELD_ERRNO] = 0;
    f->v[FIELD_LATENCY] = 0;
    fields_ids(f, pid_tgid);
    eval_rules(ctx, en, pid_tgid, ctx->nr, bpf_ktime_get_ns(), 0);
    return 0;
}

int snapd_sys_exit(struct sys_ctx *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    struct inflight *in = inflight.lookup(&tid);
    if (!in)
        return 0;
    u32 zero = 0;
    struct fields *f = scratch_fields.lookup(&zero);
    if (!f)
        return 0;
    __builtin_memcpy(f->v, in->args, sizeof(in->args));
    u64 start = in->ts, mask = in->mask;
    inflight.delete(&tid);
    u32 tgid = pid_tgid >> 32;
    u64 *tm = targets.lookup(&tgid);
    if (!tm)
        return 0;
    mask &= *tm;
    if (!mask)
        return 0;
    s32 nr = ctx->nr;
    u64 now = bpf_ktime_get_ns();
    s64 ret = 0;
    bpf_probe_read_kernel(&ret, sizeof(ret), (void *)ctx + sizeof(struct sys_ctx));
    f->v[FIELD_RET] = ret;
    // include/linux/err.h IS_ERR_VALUE: errors are -1..-4095
    f->v[FIELD_ERRNO] = (ret < 0 && ret >= -4095) ? -ret : 0;
    f->v[FIELD_LATENCY] = now - start;
    fields_ids(f, pid_tgid);
    eval_rules(ctx, mask, pid_tgid, nr, now, EF_EXIT);
    return 0;
}

// ---- target tracking -----------------------------------------------------------------------

static __always_inline int glob_match(const struct rule_cfg *r, const char *comm)
{
    // Shift-and over a glob with '*' and '?': bit p of `st` means pattern[0..p) matched so far.
    u32 star = r->glob_star;
    u32 st = 1;
    st |= (st & star) << 1;
    u32 live = ~0u;  // all ones until comm's NUL, then zero: later steps keep st
#pragma unroll
    for (int i = 0; i < 16; i++) {
        u8 c = comm[i];
        live &= -(u32)is_less(0, c);
        u32 nst = ((st & r->glob_chars[c]) << 1) | (st & star);
        nst |= (nst & star) << 1;
        st = (nst & live) | (st & ~live);
    }
    return opaque(st >> r->glob_len) & 1;
}

// Which rules select a process that just exec'd. Branch-free per rule, like eval_pred: with a
// `continue` per selector each of the 64 iterations split the paths the verifier walks, more
// than the 6.1 verifier's budget of 1M instructions (E2BIG); 6.18's prunes them.
static __always_inline u64 classify(u32 tgid, u32 uid, u64 exe_hash, const char *comm)
{
    u64 bits = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < SNAPD_MAX_RULES; i++) {
        u32 slot = i;
        struct rule_cfg *r = rules.lookup(&slot);
        if (!r)
            continue;  // never, for an array map inside its bounds
        u64 fl = r->flags;
        HIDE(fl);
        u64 ok = is_zero(r->gen) ^ 1;
        ok &= is_zero(fl & RF_PID) | is_zero((u64)(r->pid ^ tgid));
        ok &= is_zero(fl & RF_UID) | is_zero((u64)(r->uid ^ uid));
        ok &= is_zero(fl & RF_EXE) | is_zero(exe_hash ^ r->exe_hash[0]) | is_zero(exe_hash ^ r->exe_hash[1]);
        u64 cg = bpf_get_current_ancestor_cgroup_id(r->cg_level);  // cheap; execs are rare
        ok &= is_zero(fl & RF_CGROUP) | is_zero(cg ^ r->cg_id);
        ok &= is_zero(fl & RF_COMM) | glob_match(r, comm);
        bits |= (ok & 1) << i;
    }
    return bits;
}

// The exec probe hashes the file name and hands over to snapd_classify by a tail call: verified
// as one program, every exit of the hash loop would be a path into the rule loop, and the 6.1
// verifier ran out of its 1M-instruction budget (E2BIG) walking them.
struct execstate {
    u64 hash;
    u32 tgid;
    u32 uid;
    char comm[16];
};
BPF_PERCPU_ARRAY(scratch_exec, struct execstate, 1);
BPF_PROG_ARRAY(execprog, 1);

int snapd_classify(void *ctx)
{
    u32 zero = 0;
    struct execstate *es = scratch_exec.lookup(&zero);
    if (!es)
        return 0;
    u32 tgid = es->tgid;
    u64 bits = opaque(classify(tgid, es->uid, es->hash, es->comm));
    if (bits)
        targets.update(&tgid, &bits);
    else
        targets.delete(&tgid);
    // As at a fork: the function and usdt rules of a process that is a target from its exec
    // on are attached when snapd reads this record (ret 0: an exec), not at the next rescan.
    // Its executable and ld.so are mapped by now (fs/binfmt_elf.c load_elf_binary, before
    // fs/exec.c exec_binprm fires the tracepoint); its libraries come later, from ld.so, and
    // are attached at the rescan.
    u64 up = bits & global(GLOBAL_UPROBE_RULES);
    if (up)
        emit_record(EF_NEW_TARGET, tgid, up, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 zero = 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 *active = globals.lookup(&zero);  // GLOBAL_ACTIVE == 0
    if (!active || *active == 0)
        return 0;
    u32 tgid = pid_tgid >> 32;
    if (is_own(tgid)) {
        targets.delete(&tgid);
        return 0;
    }
    struct execstate *es = scratch_exec.lookup(&zero);
    struct path_buf *pb = scratch_path.lookup(&zero);
    if (!es || !pb)
        return 0;
    bpf_get_current_comm(es->comm, sizeof(es->comm));
    char *path = pb->s;
    u32 loc = args->data_loc_filename;
    long len = bpf_probe_read_kernel_str(path, SNAPD_PATH_MAX, (void *)args + (loc & 0xffff));
    // FNV-1a 64 over the bytes before the NUL; snapd.probe.targets.fnv1a computes the same.
    u64 h = 14695981039346656037ULL;
    for (u32 i = 0; i < SNAPD_PATH_MAX; i++) {
        if ((long)i >= len - 1)
            break;
        h ^= (u8)path[i];
        h *= 1099511628211ULL;
    }
    es->hash = h;
    es->tgid = tgid;
    es->uid = (u32)bpf_get_current_uid_gid();
    execprog.call(args, 0);
    return 0;
}

// A fork snapshot's clone, injected by snapd's dumper into a halted (so traced) thread of the
// target: clone(CLONE_FILES) with exit signal 0 (snapd.core.fork CLONE_ARGS), a call programs
// do not make. Marked from its entry to its exit, so that the fork probe, which runs in
// between, knows the child for snapd's.
int snapd_clone_enter(struct sys_ctx *ctx)
{
    u64 flags = 0;
    bpf_probe_read_kernel(&flags, sizeof(flags), (void *)ctx + sizeof(struct sys_ctx));
    if (flags != SNAPSHOT_CLONE_FLAGS)
        return 0;
    char *t = (char *)bpf_get_current_task();
    unsigned int ptrace = 0;
    bpf_probe_read_kernel(&ptrace, sizeof(ptrace), t + TASK_PTRACE_OFF);
    if (ptrace == 0)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u8 one = 1;
    injecting.update(&tid, &one);
    return 0;
}

int snapd_clone_exit(struct sys_ctx *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    injecting.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 parent = pid_tgid >> 32, tid = (u32)pid_tgid;
    u32 child = args->child_pid;
    if (is_own(parent) || injecting.lookup(&tid)) {
        // A child of snapd (action.run, the dumper), or a fork snapshot's child: it keeps the
        // target's comm, exe and cgroup, and must never be taken for a target.
        u8 one = 1;
        mine.update(&child, &one);
        targets.delete(&child);
        return 0;
    }
    u64 *pm = targets.lookup(&parent);
    u32 which = GLOBAL_PID_RULES;
    u64 *pidrules = globals.lookup(&which);
    u64 bits = 0;
    // A child has its parent's comm, exe, uid and cgroup: it inherits every rule but pid ones.
    if (pm && pidrules)
        bits = *pm & ~*pidrules;
    if (bits)
        targets.update(&child, &bits);
    else
        targets.delete(&child);
    // Function and usdt rules are attached per process (uattach.py): the child's attachment is
    // made when snapd reads this record, not at the next /proc rescan. The child has not run
    // yet; until then its inherited breakpoints are the parent's, which the kernel removes
    // from it at their first hit (kernel/events/uprobes.c: the consumer's filter refuses it).
    u64 up = bits & global(GLOBAL_UPROBE_RULES);
    if (up)
        emit_record(EF_NEW_TARGET, child, up, parent);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid, tgid = pid_tgid >> 32;
    inflight.delete(&tid);
    if (tid != tgid) {
        targets.delete(&tid);  // a thread's entry, made by the fork probe
        mine.delete(&tid);
    }
#if SNAPD_EXIT_GROUP_DEAD
    int group_dead = args->group_dead;
#else
    // Kernels whose tracepoint has no group_dead field (snapd.kernel probes its format): do_exit()
    // has already counted this thread out, so no live thread is left when the group dies
    // (kernel/exit.c: group_dead = atomic_dec_and_test(&tsk->signal->live) precedes
    // trace_sched_process_exit). Threads exiting together may all read 0: the group is dying.
    // current->signal->live at the running kernel's offsets (see current_traced).
    char *t = (char *)bpf_get_current_task();
    char *sig = NULL;
    int live = 1;
    bpf_probe_read_kernel(&sig, sizeof(sig), t + TASK_SIGNAL_OFF);
    if (sig)
        bpf_probe_read_kernel(&live, sizeof(live), sig + SIGNAL_LIVE_OFF);
    int group_dead = live == 0;
#endif
    if (group_dead) {
        targets.delete(&tgid);
        mine.delete(&tgid);
    }
    return 0;
}

// ---- perf-event programs -----------------------------------------------------------------------

// The cpu trigger: which process a ~99 Hz cpu-clock sample lands on, counted per (rule, process)
// in SNAPD_CPU_BUCKETS buckets of window/SNAPD_CPU_BUCKETS. Like snapd_eval, one rule per (tail)
// call keeps verification small however many cpu rules a process matches.
struct cpuscan {
    u64 mask;
    u64 pid_tgid;
    u64 now;
};
BPF_PERCPU_ARRAY(scratch_cpuscan, struct cpuscan, 1);
BPF_PROG_ARRAY(cpuprog, 1);

int snapd_cpu_step(struct bpf_perf_event_data *ctx)
{
    u32 zero = 0;
    struct cpuscan *cs = scratch_cpuscan.lookup(&zero);
    if (!cs || !cs->mask)
        return 0;
    u64 mask = cs->mask;
    u64 low = mask & -mask;
    cs->mask = mask & (mask - 1);
    u32 slot = __builtin_popcountll(low - 1) & (SNAPD_MAX_RULES - 1);
    u64 pid_tgid = cs->pid_tgid, now = cs->now;
    struct rule_cfg *r = rules.lookup(&slot);
    if (!r || r->gen == 0 || r->cpu_bucket_ns == 0)
        goto next;
    if (muted(slot, r, pid_tgid >> 32, &now))
        goto next;
    struct wkey k = {.slot = slot, .tgid = pid_tgid >> 32};
    struct cpustate *c = cpuwin.lookup(&k);
    if (!c || c->gen != r->gen) {
        struct cpustate *z = scratch_cpu.lookup(&zero);
        if (!z)
            goto next;
        z->gen = r->gen;
#pragma unroll
        for (int j = 0; j < SNAPD_CPU_BUCKETS; j++) {
            z->epoch[j] = 0;
            z->cnt[j] = 0;
        }
        cpuwin.update(&k, z);
        c = cpuwin.lookup(&k);
        if (!c)
            goto next;
    }
    u64 epoch = now / r->cpu_bucket_ns;
    u32 b = epoch % SNAPD_CPU_BUCKETS;
    if (c->epoch[b] != epoch) {
        c->epoch[b] = epoch;
        c->cnt[b] = 0;
    }
    __sync_fetch_and_add(&c->cnt[b], 1);
    u64 sum = 0;
#pragma unroll
    for (int j = 0; j < SNAPD_CPU_BUCKETS; j++) {
        if (c->epoch[j] + SNAPD_CPU_BUCKETS > epoch)
            sum += c->cnt[j];
    }
    if (sum >= r->cpu_threshold) {
#pragma unroll
        for (int j = 0; j < SNAPD_CPU_BUCKETS; j++)
            c->cnt[j] = 0;
        struct fields *f = scratch_fields.lookup(&zero);
        if (f) {
            __builtin_memset(f->v, 0, 8 * sizeof(s64));
            emit(slot, r, pid_tgid, -1, f, now, EF_CPU, sum);
        }
    }
next:
    if (cs->mask)
        cpuprog.call(ctx, 0);
    return 0;
}

int snapd_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (tgid == 0)
        return 0;
    u64 *tm = targets.lookup(&tgid);
    if (!tm)
        return 0;
    u32 which = GLOBAL_CPU_RULES;
    u64 *cm = globals.lookup(&which);
    if (!cm)
        return 0;
    u64 mask = *tm & *cm;
    if (!mask)
        return 0;
    u32 zero = 0;
    struct cpuscan *cs = scratch_cpuscan.lookup(&zero);
    if (!cs)
        return 0;
    cs->mask = mask;
    cs->pid_tgid = pid_tgid;
    cs->now = bpf_ktime_get_ns();
    cpuprog.call(ctx, 0);
    return 0;
}

int snapd_tick(struct bpf_perf_event_data *ctx)
{
    u64 period = ctx->sample_period;
    u64 *m = ticks.lookup(&period);
    if (!m || *m == 0)
        return 0;
    u64 fire = armed_ticks(*m);  // every + then rules are armed, the others fire now
    if (!fire)
        return 0;
    emit_record(EF_TICK, 0, fire, period);  // the rules (bitmask) this period fires
    return 0;
}

// ---- at the event: registers and top of stack of a firing uprobe (atevent.bpf.c) ------------
//
// A second record right after the event's own (same program run, so next in the ring): the
// event's header with EF_AT_EVENT, then struct at_event, cut to the stack bytes read. The
// daemon joins it to the event (snapd.probe.probes) for the report's "at the event" frames.
struct at_rec {
    struct event e;
    struct at_event at;
};
BPF_PERCPU_ARRAY(scratch_at, struct at_rec, 1);

static __always_inline void at_emit(struct pt_regs *ctx, u32 slot, u32 gen, u64 pid_tgid, u64 now)
{
    u32 zero = 0;
    struct at_rec *a = scratch_at.lookup(&zero);
    if (!a)
        return;
    __builtin_memset(&a->e, 0, sizeof(a->e));
    a->e.ts = now;
    a->e.pid = pid_tgid >> 32;
    a->e.tid = (u32)pid_tgid;
    a->e.slot = slot;
    a->e.gen = gen;
    a->e.nr = -1;
    a->e.flags = EF_AT_EVENT;
    a->at.flags = 0;
    a->at.stack_len = 0;
    if (at_regs_from(&a->at, ctx) == 0)
        at_stack(&a->at);
    u64 size = at_record_size(offsetof(struct at_rec, at), &a->at, sizeof(struct at_rec));
    if (events.ringbuf_output(a, size, 0) != 0)
        count_up(CTR_DROPPED);
}

// ---- uprobe programs: the function and usdt triggers (uprobe.bpf.c) --------------------------
//
// One uprobe program and one uretprobe program serve every function/usdt rule. Each attachment
// is a link (a uprobe_multi link, or a perf event's) with a BPF cookie, the index of its
// `usite`, which names the rule slot (snapd.probe.uattach). A uprobe event concerns exactly one rule, so it is evaluated inline
// (snapd_eval is a TRACEPOINT program: a KPROBE program cannot tail-call it).
static __always_inline int uprobe_hit(struct pt_regs *ctx, int at_return, bool strings)
{
    // The cookie: the usite's index, and in its high half the process the link was made for
    // (snapd.probe.uprobes.cookie; 0: a system-wide link).
    u64 cookie = bpf_get_attach_cookie(ctx);
    u32 owner = cookie >> 32;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    // The kernel runs a process's link in that process's mm only (kernel/trace/trace_uprobe.c
    // uprobe_perf_filter; a uprobe_multi link in its thread group only, bpf_trace.c
    // uprobe_prog_run): what else can hit a perf-event link is a CLONE_VM child sharing the mm
    // (vfork, posix_spawn), which this compare turns away without the targets lookup.
    if (owner && tgid != owner)
        return 0;
    u32 idx = (u32)cookie & (SNAPD_MAX_USITES - 1);
    struct usite *s = usites.lookup(&idx);
    if (!s || s->gen == 0)
        return 0;
    u32 slot = s->slot & (SNAPD_MAX_RULES - 1);
    struct rule_cfg *r = rules.lookup(&slot);
    if (!r || r->gen != s->gen)
        return 0;  // a stale attachment of an unloaded rule, closing in the background
    if (!owner) {
        // A system-wide link, or a child that inherited its breakpoint at fork: a target?
        u64 *tm = targets.lookup(&tgid);
        if (!tm || !(*tm & (1ULL << slot)))
            return 0;
    }
    u32 zero = 0;
    struct fields *f = scratch_fields.lookup(&zero);
    if (!f)
        return 0;
    u64 now = 0;  // read when needed: the clock is a noticeable part of a hit that passes nothing
    u32 flags = EF_UPROBE;
    struct ukey k = uprobe_call_key(idx, pid_tgid);
    if (!at_return) {
        // Only what the predicate reads, before it has passed: a USDT operand in memory costs
        // a bpf_probe_read_user (an entry saved for the return is read whole: the event shows it)
        uprobe_args(ctx, s, f->v, (s->flags & US_SAVE_ENTRY) ? ~0u : r->reads);
        if (s->flags & US_SAVE_ENTRY) {
            // the entry half of a return rule: its arguments and time, for the return
            struct uentry e = {.ts = bpf_ktime_get_ns()};
            __builtin_memcpy(e.args, f->v, sizeof(e.args));
            uinflight.update(&k, &e);
            return 0;
        }
        f->v[FIELD_RET] = 0;
        f->v[FIELD_LATENCY] = 0;
    } else {
        struct uentry *e = uinflight.lookup(&k);
        if (!e)
            return 0;  // attached mid-call: this return has no entry
        now = bpf_ktime_get_ns();
        __builtin_memcpy(f->v, e->args, sizeof(e->args));
        f->v[FIELD_LATENCY] = now - e->ts;
        uinflight.delete(&k);
        f->v[FIELD_RET] = PT_REGS_RC(ctx);
        flags |= EF_RETURN;
    }
    f->v[FIELD_ERRNO] = 0;
    f->v[FIELD_PID] = tgid;
    f->v[FIELD_TID] = (u32)pid_tgid;
    if (r->reads & (1u << FIELD_UID))
        f->v[FIELD_UID] = (u32)bpf_get_current_uid_gid();
    if (muted(slot, r, tgid, &now))
        return 0;
    count_up(CTR_SEEN);
    // `arg1 == "name"`: the C strings arg0..arg5 point to, as fields str0..3 (the rows under
    // SNAPD_UPROBE_NR, snapd.probe.strrows); only for a rule that has any (its reads name them)
    if (strings && (r->reads & (0xfu << FIELD_STR0)))
        str_fields(slot, SNAPD_UPROBE_NR, f);
    if (!eval_pred(r, f))
        return 0;
    if (!at_return)
        uprobe_args(ctx, s, f->v, ~0u);  // the rest, for the event
    if (!now)
        now = bpf_ktime_get_ns();
    if (window_hit(slot, r, tgid, now)) {
        // value: how many arguments the event shows (a USDT site's operands; a function's six)
        emit(slot, r, pid_tgid, -1, f, now, flags, (s->flags & US_USDT) ? s->nargs : 6);
        at_emit(ctx, slot, r->gen, pid_tgid, now);
    }
    return 0;
}

// As for snapd_eval: the _plain pair, without the string matcher, where the verifier refuses it.
int snapd_uprobe(struct pt_regs *ctx)
{
    return uprobe_hit(ctx, 0, true);
}

int snapd_uretprobe(struct pt_regs *ctx)
{
    return uprobe_hit(ctx, 1, true);
}

int snapd_uprobe_plain(struct pt_regs *ctx)
{
    return uprobe_hit(ctx, 0, false);
}

int snapd_uretprobe_plain(struct pt_regs *ctx)
{
    return uprobe_hit(ctx, 1, false);
}

// ---- strings: `path ~ "glob"`, `data contains "s"` on syscalls (strings.bpf.c) ---------------
//
// A rule's string comparisons (at most SNAPD_MAX_STRS) are map rows: per comparison k its
// pattern (strpats[slot * MAX_STRS + k]) and, per syscall, where the string is (strsrcs). Their
// outcomes become the fields str0..str3 that the rule's predicate compares with 1.
struct strkey {
    u32 slot;
    s32 nr;
    u32 k;
};
BPF_HASH(strsrcs, struct strkey, struct str_src, SNAPD_MAX_STRSRCS);
BPF_ARRAY(strpats, struct str_pattern, SNAPD_MAX_RULES * SNAPD_MAX_STRS);
BPF_ARRAY(strn, u32, SNAPD_MAX_RULES);  // string comparisons of each rule (0: none)
BPF_PERCPU_ARRAY(scratch_str, struct str_buf, 1);

static __always_inline void str_fields(u32 slot, s32 nr, struct fields *f)
{
    u32 *n = strn.lookup(&slot);
    if (!n || *n == 0)
        return;
    u32 cnt = *n, zero = 0;
    struct str_buf *buf = scratch_str.lookup(&zero);
    if (!buf)
        return;
#pragma clang loop unroll(disable)
    for (u32 k = 0; k < SNAPD_MAX_STRS; k++) {
        if (k >= cnt)
            break;
        // The mask must survive into the program: clang, knowing k < SNAPD_MAX_STRS, drops it,
        // and the 6.1 verifier, which cannot tie k to that bound on every path, then refuses
        // f->v + 8 * (FIELD_STR0 + k) as possibly past the map value.
        u32 fi = FIELD_STR0 + k;
        HIDE(fi);
        fi &= 15;
        f->v[fi] = 0;  // a string that cannot be read matches nothing
        struct strkey key = {.slot = slot, .nr = nr, .k = k};
        struct str_src *src = strsrcs.lookup(&key);
        u32 pi = (slot * SNAPD_MAX_STRS + k) & (SNAPD_MAX_RULES * SNAPD_MAX_STRS - 1);
        struct str_pattern *pat = strpats.lookup(&pi);
        if (!src || !pat)
            continue;
        struct str_read rd = {};
        if (str_read_arg(src, f->v, buf->b, &rd) != 0)
            continue;
        f->v[fi] = str_match(pat, buf->b, &rd);
    }
}

// ---- signals: the `signal` trigger (signal.bpf.c) ---------------------------------------------
//
// signal:signal_deliver runs in the target's context, in get_signal() after the signal was
// dequeued and before its action; attached only while a signal rule is loaded. Only a delivery
// to a handler of the target's fires: a default fatal action is already a group exit (it
// arrives here as SIGKILL), and an ignored signal is never delivered (docs/triggers-design.md
// section 6). stop: kernel's SIGSTOP, queued through irq_work (irqs are off under the siglock),
// is taken on the way back to user mode, after the handler's frame was pushed: the target stops
// at the handler's first instruction.
struct sig_deliver_ctx {
    u64 hdr;
    s32 sig;
    s32 err;
    s32 code;
    u32 pad;
    u64 sa_handler;
    u64 sa_flags;
};
BPF_ARRAY(sigmasks, u64, SNAPD_MAX_RULES);  // bit sig-1 of each signal rule's signals
// Who sent each signal to a target (signal_generate, in the sender's context), until its
// delivery takes it; cleared when the last signal rule goes (snapd.probe.probes). LRU: signals
// never delivered (a default action, a blocked signal) age out.
BPF_TABLE("lru_hash", struct sig_key, struct sig_sender, sig_senders, 1024);

struct sig_generate_ctx {
    u64 hdr;
    s32 sig;
    s32 err;
    s32 code;
    char comm[16];       // the receiver's
    s32 pid;             // the receiving task
    s32 group;
    s32 result;
};

int snapd_signal_generate(void *ctx)
{
    if (!global(GLOBAL_SIG_RULES))
        return 0;
    struct sig_generate_ctx a = {};
    bpf_probe_read_kernel(&a, sizeof(a), ctx);
    // Only signals sent to a target of a signal rule: the receiver is the process for kill(2)
    // (its tgid), a thread for tgkill(2), which names no sender unless it is the main thread.
    u32 receiver = (u32)a.pid;
    if (!target_rules(receiver, GLOBAL_SIG_RULES))
        return 0;
    struct sig_key key = {.tgid = receiver, .sig = (u32)a.sig};
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct sig_sender snd = {};
    snd.ts = bpf_ktime_get_ns();
    snd.pid = pid_tgid >> 32;
    snd.tid = (u32)pid_tgid;
    snd.uid = (u32)bpf_get_current_uid_gid();
    snd.code = a.code;
    snd.result = a.result;
    bpf_get_current_comm(snd.comm, sizeof(snd.comm));
    sig_senders.update(&key, &snd);
    return 0;
}

// The sender of `sig` to this thread (tgkill) or process (kill) into f->v[3..5]: its tgid and
// uid in v[3] (0: none recorded), its comm in v[4..5], the si_code it sent with in ret.
static __always_inline void sig_sender_fields(u64 pid_tgid, u32 sig, struct fields *f)
{
    struct sig_key key = {.tgid = (u32)pid_tgid, .sig = sig};
    struct sig_sender *snd = sig_senders.lookup(&key);
    if (!snd) {
        key.tgid = pid_tgid >> 32;
        snd = sig_senders.lookup(&key);
    }
    if (!snd)
        return;
    f->v[3] = (u64)snd->pid | ((u64)snd->uid << 32);
    __builtin_memcpy(&f->v[4], snd->comm, sizeof(snd->comm));
    f->v[FIELD_RET] = snd->code;
    sig_senders.delete(&key);
}

int snapd_signal_deliver(void *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    u64 mask = target_rules(tgid, GLOBAL_SIG_RULES);
    if (!mask)
        return 0;
    struct sig_deliver_ctx a = {};
    bpf_probe_read_kernel(&a, sizeof(a), ctx);
    if (!sig_can_stop(a.sig, a.sa_handler))
        return 0;
    u64 bit = sig_bit(a.sig), now = bpf_ktime_get_ns();
    u32 zero = 0;
    struct fields *f = scratch_fields.lookup(&zero);
    if (!f)
        return 0;
    __builtin_memset(f->v, 0, sizeof(f->v));
    f->v[0] = a.sig;
    f->v[1] = a.code;
    f->v[2] = a.sa_handler;
    sig_sender_fields(pid_tgid, a.sig, f);
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < SNAPD_MAX_RULES; i++) {
        if (!mask)
            break;
        u64 low = mask & -mask;
        mask &= mask - 1;
        u32 slot = __builtin_popcountll(low - 1) & (SNAPD_MAX_RULES - 1);
        u64 *sm = sigmasks.lookup(&slot);
        struct rule_cfg *r = rules.lookup(&slot);
        if (!sm || !(*sm & bit) || !r || r->gen == 0 || muted(slot, r, tgid, &now))
            continue;
        count_up(CTR_SEEN);
        emit(slot, r, pid_tgid, -1, f, now, EF_SIGNAL, a.sig);
    }
    return 0;
}

// ---- every + then: the tick arms, the target's next listed syscall fires (armed.bpf.c) -------
BPF_ARRAY(armed, u64, SNAPD_MAX_RULES);  // (generation << 32) | ticks since loaded
BPF_TABLE("lru_hash", struct armed_key, u64, consumed, SNAPD_MAX_WINDOWS);

// Arms the every + then rules of `mask`; returns the others (they fire at the tick itself).
static __always_inline u64 armed_ticks(u64 mask)
{
    u64 am = mask & global(GLOBAL_ARMED_RULES);
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < SNAPD_MAX_RULES; i++) {
        if (!am)
            break;
        u64 low = am & -am;
        am &= am - 1;
        u32 slot = __builtin_popcountll(low - 1) & (SNAPD_MAX_RULES - 1);
        u64 *w = armed.lookup(&slot);
        if (w)
            armed_tick(w);
    }
    return mask & ~global(GLOBAL_ARMED_RULES);
}

static __always_inline int armed_ok(u32 slot, const struct rule_cfg *r, u32 tgid)
{
    if (!(r->flags & RF_ARMED))
        return 1;
    u64 *a = armed.lookup(&slot);
    if (!a)
        return 0;
    struct armed_key k = {.slot = slot, .tgid = tgid};
    u64 *c = consumed.lookup(&k);
    if (!c) {
        u64 zero = 0;
        consumed.update(&k, &zero);
        c = consumed.lookup(&k);
        if (!c)
            return 0;
    }
    return armed_take(a, c);
}
