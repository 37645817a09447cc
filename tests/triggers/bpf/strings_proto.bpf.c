// SPDX-License-Identifier: GPL-2.0-or-later
// Standalone prototype of the in-kernel string match (src/snapd/probe/strings.bpf.c): attached
// to syscalls:sys_enter_{openat,write,writev,sendto,sendmsg} for ONE process (cfg.tgid), it
// matches the string its str_src says (per syscall number) against pattern 0 and reports
// each call with the outcome in a ring buffer. Built by tests/triggers/test_strings.py.
#include <uapi/linux/ptrace.h>
#include "snapd/probe/strings.bpf.c"

struct cfg {
    u32 tgid;
    u32 pad;
};

struct result {
    s32 nr;
    u32 matched;
    s32 read_rc;
    u32 len;
    u32 truncated;
    u32 pad;
    s64 arg0;
};

struct sys_ctx {
    u64 hdr;
    s32 nr;
    u32 pad;
};

BPF_ARRAY(cfgmap, struct cfg, 1);
BPF_ARRAY(patterns, struct str_pattern, 1);
BPF_HASH(sources, u32, struct str_src, 64);
BPF_RINGBUF_OUTPUT(results, 16);
BPF_PERCPU_ARRAY(str_scratch, struct str_buf, 1);

int proto_sys_enter(struct sys_ctx *ctx)
{
    u32 zero = 0;
    struct cfg *c = cfgmap.lookup(&zero);
    if (!c || (bpf_get_current_pid_tgid() >> 32) != c->tgid)
        return 0;
    u32 nr = ctx->nr;
    struct str_src *src = sources.lookup(&nr);
    struct str_pattern *pat = patterns.lookup(&zero);
    struct str_buf *sb = str_scratch.lookup(&zero);
    if (!src || !pat || !sb)
        return 0;
    s64 args[8] = {};
    bpf_probe_read_kernel(args, 6 * sizeof(s64), (void *)ctx + sizeof(struct sys_ctx));
    struct str_read rd = {};
    int rc = str_read_arg(src, args, sb->b, &rd);
    struct result *r = results.ringbuf_reserve(sizeof(struct result));
    if (!r)
        return 0;
    r->nr = nr;
    r->read_rc = rc;
    r->len = rd.len;
    r->truncated = rd.truncated;
    r->matched = rc == 0 ? str_match(pat, sb->b, &rd) : 0;
    r->pad = 0;
    r->arg0 = args[0];
    results.ringbuf_submit(r, 0);
    return 0;
}
