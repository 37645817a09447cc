// SPDX-License-Identifier: GPL-2.0-or-later
//
// The tick-then-syscall form (the blog's gcore.d: tick-10s sets doit; the target's next syscall
// is stopped there, gcore'd, prun):
//
//   trigger: {every: 10s, then: {syscall: [read, write, clock_nanosleep]}}
//
// Per rule slot one u64 `armed` word: (generation << 32) | epoch. The tick program (a cpu-clock
// perf event of the rule's period) adds 1 to the epoch of every rule of that period: a plain
// atomic add, which any BPF JIT has (BPF_XADD). A syscall of a target consumes the tick for
// its process: the (slot, tgid) entry of `consumed` holds the last armed word taken, and a
// compare-and-swap from the old value to the current one lets exactly one thread of the
// process win (BPF_CMPXCHG, Linux 5.12+). So each target fires at most once per tick, at its
// first matching syscall after it, like `every` fires once per target; a rule reloaded (new
// generation) starts unarmed whatever its old epoch.

struct armed_key {
    u32 slot;
    u32 tgid;
};

// Whether this syscall takes the current tick of the rule for its process. `armed` points at the
// rule's word, `consumed` at the (slot, tgid) entry (created as 0 by the includer).
static __always_inline int armed_take(const u64 *armed, u64 *consumed)
{
    u64 a = *(volatile const u64 *)armed;
    if ((u32)a == 0)
        return 0;  // no tick since the rule was loaded
    u64 c = *(volatile u64 *)consumed;
    if (c == a)
        return 0;  // this process already took this tick
    return __sync_val_compare_and_swap(consumed, c, a) == c;
}

// The tick: arm every rule in `mask` (the rules of this period).
static __always_inline void armed_tick(u64 *word)
{
    __sync_fetch_and_add(word, 1);
}
