"""Regenerate tests/security/corpus/: malformed and hostile rule files for the loader.

    .venv/bin/python tests/security/make_corpus.py

The files are committed (the fuzz test reads them, never this script), so a new kind of bad
input is added here once and then stays in the corpus. Names say what each file is:
``valid-*`` must load, ``inject-*`` may load or not (the kernel test loads the ones that do),
every other file must be refused with RuleErrors only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

OUT = Path(__file__).with_name("corpus")
CAP = 256 * 1024  # snapd.rules.MAX_FILE_BYTES

GOOD = (
    "name: good\n"
    "description: a complete rule, cut short in the truncated-* files\n"
    "target:\n  comm: nginx\n  uid: 33\n"
    "trigger:\n  syscall: [write, writev]\n  when: errno == EPIPE and arg2 > 0\n"
    "  count: 5\n  within: 10s\n"
    "action:\n  stop: ptrace\n  snapshot: fork\n"
    "  core: {content: default-shm, name: 'core.%e.%p', repeat: 2, interval: 5s}\n"
    "  run: [/bin/true, '{core}']\n"
    "limits: {max_cores: 3, min_interval: 5m}\n"
    "active: '01:00-04:00'\n"
)
T = "target: {comm: x}\n"
S = "trigger: {syscall: write}\n"

# Strings a hostile rule author might try in C, shell, SQL, format-string or YAML contexts.
INJECT = [
    '"); system("id"); //',
    "*/ #include </etc/shadow> /*",
    "#define SNAPD_MAX_RULES 0",
    '\\"; bpf_override_return(ctx, 0); \\"',
    "$(id)",
    "`id`",
    "'; DROP TABLE cores; --",
    "%n%n%n%s%s",
    "{core}{__import__('os')}",
    "__import__('os').system('id')",
    "../../../../etc/passwd",
]


def files() -> dict[str, bytes]:
    out: dict[str, bytes] = {}

    def put(name: str, text: str | bytes) -> None:
        out[name] = text.encode() if isinstance(text, str) else text

    put("valid-good.yaml", GOOD)
    # truncated documents: a complete rule cut at 24 points (each misses a required part or
    # ends inside a token)
    cuts = [GOOD.index("trigger:") - k for k in (1, 5, 20, 40)]
    cuts += [GOOD.index("trigger:") + k for k in (3, 8, 9, 12, 20, 28)]
    cuts += [GOOD.index("when:") + k for k in (7, 14, 17)]
    cuts += [GOOD.index("count:") + k for k in (6,)]
    cuts += [GOOD.index("core:") + k for k in (7, 21, 30, 45, 60)]
    cuts += [GOOD.index("run:") + k for k in (7, 12)]
    cuts += [GOOD.index("limits:") + k for k in (10, 30)]
    cuts += [GOOD.index("active:") + k for k in (10,)]
    for i, c in enumerate(cuts):
        put(f"truncated-{i:02d}.yaml", GOOD[:c])
    put("truncated-quote.yaml", T + "trigger: {syscall: write, when: 'errno == ")
    put("truncated-dquote.yaml", T + 'trigger: {syscall: write, when: "errno == \\')
    put("truncated-flow.yaml", "target: {comm: x, trigger: [write, ")
    put("truncated-block-scalar.yaml", T + S + "description: |\n")
    put("truncated-directive.yaml", "%YAML 1.1\n---")
    put("truncated-utf8.yaml", (T + S + "description: caf").encode() + b"\xc3")

    # deep nesting
    put("deep-flow-seq.yaml", "a: " + "[" * 120_000 + "]" * 120_000)
    put("deep-flow-map.yaml", "a: " + "{a: " * 60_000 + "1" + "}" * 60_000)
    put("deep-block-map.yaml", "".join(" " * i + f"k{i}:\n" for i in range(640)))
    put("deep-block-seq.yaml", "a:\n" + "".join(" " * i + "-\n" for i in range(1, 700)))
    put(
        "deep-when.yaml",
        T + "trigger:\n  syscall: write\n  when: '" + "(" * 500 + "arg0 == 1" + ")" * 500 + "'\n",
    )
    put("deep-when-not.yaml", T + "trigger:\n  syscall: write\n  when: '" + "not " * 250 + "arg0 == 1'\n")

    # huge scalars (each just under the 256 KiB cap), and one just over it
    room = CAP - 100
    put("huge-description.yaml", T + S + "description: " + "x" * room + "\n")
    put("huge-comm.yaml", "target: {comm: " + "a" * room + "}\n" + S)
    put("huge-exe.yaml", "target: {exe: /" + "a/" * (room // 2) + "}\n" + S)
    put(
        "huge-when.yaml",
        T + "trigger: {syscall: write, when: '" + "arg0 == 1 or " * (room // 14) + "arg0 == 2'}\n",
    )
    put("huge-int.yaml", "target: {pid: " + "9" * room + "}\n" + S)
    put("huge-hex-int.yaml", "target: {pid: 0x" + "f" * room + "}\n" + S)
    put("huge-binary-int.yaml", T + "trigger: {syscall: write, count: 0b" + "1" * room + "}\n")
    put("huge-sexagesimal-int.yaml", "target: {uid: " + ":".join(["59"] * (room // 3)) + "}\n" + S)
    put("huge-underscore-int.yaml", T + S + "limits: {max_cores: " + "1_" * (room // 2) + "1}\n")
    put("huge-float.yaml", T + "trigger: {syscall: write, count: 1e99999999}\n")
    put("huge-key.yaml", T + S + "k" * room + ": 1\n")
    put(
        "huge-syscall-list.yaml",
        T + "trigger: {syscall: [" + ",".join(f"s{i:05d}" for i in range(36_000)) + "]}\n",
    )
    put("valid-huge-run-argv.yaml", T + S + "action: {run: [/bin/true" + ", '{core}'" * (room // 11) + "]}\n")
    put("huge-many-keys.yaml", T + S + "".join(f"k{i:05d}: 1\n" for i in range(25_000)))
    put("valid-huge-many-comments.yaml", T + S + "#\n" * (room // 2))
    put("huge-many-docs.yaml", "---\n" * (room // 4))
    put("huge-over-cap.yaml", T + S + "# " + "x" * CAP + "\n")

    # YAML bombs: anchors and aliases are refused outright, merge keys are not plain keys
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True):
        lol += f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n"
    put("bomb-billion-laughs.yaml", lol)
    put(
        "bomb-billion-laughs-in-target.yaml",
        "target:\n  comm: x\n" + "".join("  " + ln + "\n" for ln in lol.splitlines()) + S,
    )
    big = "x" * 60_000
    put(
        "bomb-quadratic.yaml",
        f"description: &d '{big}'\n" + T + S + "k: [" + ", ".join(["*d"] * 3000) + "]\n",
    )
    put("bomb-alias-only.yaml", T + S + "description: *nothing\n")
    put("bomb-merge-key.yaml", T + S + "action:\n  <<: {stop: kernel}\n")
    put("bomb-anchor-on-key.yaml", "&k target: {comm: x}\n" + S)
    put("bomb-recursive-alias.yaml", "a: &a [*a]\n")

    # tags
    for i, tag in enumerate(
        [
            "!!python/object/apply:os.system ['id']",
            "!!python/object:__main__.X {a: 1}",
            "!!python/name:os.system",
            "!!python/module:os",
            "!!python/object/new:subprocess.Popen [[id]]",
            "!!binary aGVsbG8=",
            "!!set {a, b}",
            "!!omap [a: 1]",
            "!custom x",
            "!<tag:evil.example,2026:x> x",
            "!!timestamp 2026-11-27",
        ]
    ):
        put(f"tag-{i:02d}.yaml", T + S + f"description: {tag}\n")
        put(f"tag-target-{i:02d}.yaml", f"target: {tag}\n" + S)
    put(
        "tag-directive.yaml",
        "%TAG ! tag:yaml.org,2002:python/object/apply:\n---\ntarget: !os.system [id]\n" + S,
    )
    put("tag-on-key.yaml", "!!python/name:os.system target: {comm: x}\n" + S)
    put("tag-str-on-int-field.yaml", "target: {pid: !!str 12}\n" + S)

    # encodings: invalid UTF-8, other encodings, NUL bytes, CRLF, BOMs
    for i, junk in enumerate(
        [
            b"\xff",
            b"\xc3\x28",
            b"\xe2\x82",
            b"\xf0\x28\x8c\xbc",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf8\x88\x80\x80\x80",
            b"\x80",
        ]
    ):
        put(f"enc-invalid-{i}.yaml", T.encode() + S.encode() + b"description: a" + junk + b"b\n")
    put("enc-latin1-comm.yaml", "target: {comm: café}\n".encode("latin-1") + S.encode())
    put("enc-utf16le-bom.yaml", b"\xff\xfe" + (T + S).encode("utf-16-le"))
    put("enc-utf16be-bom.yaml", b"\xfe\xff" + (T + S).encode("utf-16-be"))
    put("enc-utf32-bom.yaml", b"\xff\xfe\x00\x00" + (T + S).encode("utf-32-le"))
    put("valid-bom.yaml", b"\xef\xbb\xbf" + (T + S).encode())
    put("enc-bom-twice.yaml", b"\xef\xbb\xbf\xef\xbb\xbf" + (T + S).encode())
    put("enc-bom-inside.yaml", (T + S).encode() + b"description: a\xef\xbb\xbfb\n")
    put("nul-raw-in-comm.yaml", b"target: {comm: a\x00b}\n" + S.encode())
    put("nul-raw-at-start.yaml", b"\x00" + (T + S).encode())
    put("nul-raw-line.yaml", (T + S).encode() + b"\x00\x00\x00\n")
    put("nul-escaped-in-comm.yaml", 'target: {comm: "a\\0b"}\n' + S)
    put("nul-escaped-in-exe.yaml", 'target: {exe: "/bin/true\\0/tmp/x"}\n' + S)
    put("nul-escaped-in-name.yaml", 'name: "a\\x00b"\n' + T + S)
    put("nul-escaped-in-core-name.yaml", T + S + 'action: {core: {name: "core\\0/../../x"}}\n')
    put("ctl-escape-in-description.yaml", T + S + 'description: "\\e[2J\\e]0;pwned\\a"\n')
    put("ctl-newline-in-comm.yaml", 'target: {comm: "a\\nb"}\n' + S)
    put("ctl-del-in-unit.yaml", 'target: {unit: "a\\x7fb.service"}\n' + S)
    put("ctl-bidi-in-comm.yaml", 'target: {comm: "\\u202egnp"}\n' + S)
    put("ctl-escape-in-key.yaml", T + S + '"\\e[2J\\x9b\\u202e": 1\n')
    put("ctl-escape-in-dup-key.yaml", T + S + '"\\e[2J": 1\n"\\e[2J": 2\n')
    put("ctl-escape-in-placeholder.yaml", T + S + 'action: {run: [/bin/true, "{\\e[2J}"]}\n')
    put("ctl-escape-in-tag.yaml", T + S + "description: !<tag:x,2026:\x1b[2J> x\n")
    put("ctl-escape-in-content.yaml", T + S + 'action: {core: {content: "heap+\\e[2J"}}\n')
    put("valid-crlf.yaml", (T + S).replace("\n", "\r\n"))
    put("crlf-bare-cr.yaml", (T + S).replace("\n", "\r") + "colour: red\r")
    put("crlf-mixed-bad.yaml", "target: {comm: x}\r\ntrigger: {syscall: write}\ncolour: red\r\n")
    put("enc-nel-ls.yaml", "target: {comm: x}\x85trigger: {syscall: write}\u2028colour: red\n")

    # duplicate keys at every level
    put("dup-top.yaml", T + S + T)
    put("dup-name.yaml", "name: a\nname: b\n" + T + S)
    put("dup-target.yaml", "target: {comm: x, comm: y}\n" + S)
    put("dup-target-pid.yaml", "target:\n  pid: 1\n  pid: 2\n" + S)
    put("dup-trigger.yaml", T + "trigger: {syscall: write, syscall: read}\n")
    put("dup-trigger-when.yaml", T + "trigger: {syscall: write, when: arg0 == 1, when: arg0 == 2}\n")
    put("dup-trigger-cpu.yaml", T + "trigger: {cpu: {above: 10%, above: 20%}}\n")
    put("dup-trigger-rss.yaml", T + "trigger: {rss: {above: 1GiB, above: 2GiB}}\n")
    put("dup-action.yaml", T + S + "action: {stop: ptrace, stop: kernel}\n")
    put("dup-action-core.yaml", T + S + "action: {core: {repeat: 1, repeat: 2}}\n")
    put("dup-limits.yaml", T + S + "limits: {max_cores: 1, max_cores: 2}\n")
    put("dup-quoted-vs-plain.yaml", T + S + "'limits': {}\nlimits: {}\n")
    put("dup-key-types.yaml", T + S + "1: a\n'1': b\n")

    # every field with every wrong type
    wrong = {
        "int": "123",
        "float": "1.5",
        "bool": "true",
        "null": "null",
        "tilde": "~",
        "empty": "''",
        "list": "[a, b]",
        "map": "{a: 1}",
        "date": "2001-12-14",
        "binary": "!!binary aGVsbG8=",
        "neg": "-1",
    }
    ints = {
        "target.pid",
        "target.uid",
        "trigger.count",
        "action.core.repeat",
        "limits.max_cores",
        "trigger.threads.above",
        "trigger.fds.above",
    }
    fields = {
        "name": "name: @V@\n" + T + S,
        "description": T + S + "description: @V@\n",
        "active": T + S + "active: @V@\n",
        "target": "target: @V@\n" + S,
        "target.pid": "target: {pid: @V@}\n" + S,
        "target.comm": "target: {comm: @V@}\n" + S,
        "target.exe": "target: {exe: @V@}\n" + S,
        "target.unit": "target: {unit: @V@}\n" + S,
        "target.cgroup": "target: {cgroup: @V@}\n" + S,
        "target.uid": "target: {uid: @V@}\n" + S,
        "trigger": T + "trigger: @V@\n",
        "trigger.syscall": T + "trigger: {syscall: @V@}\n",
        "trigger.syscall.item": T + "trigger: {syscall: [write, @V@]}\n",
        "trigger.when": T + "trigger: {syscall: write, when: @V@}\n",
        "trigger.count": T + "trigger: {syscall: write, count: @V@}\n",
        "trigger.within": T + "trigger: {syscall: write, count: 2, within: @V@}\n",
        "trigger.every": T + "trigger: {every: @V@}\n",
        "trigger.cpu": T + "trigger: {cpu: @V@}\n",
        "trigger.cpu.above": T + "trigger: {cpu: {above: @V@}}\n",
        "trigger.cpu.for": T + "trigger: {cpu: {above: 50%, for: @V@}}\n",
        "trigger.rss.above": T + "trigger: {rss: {above: @V@}}\n",
        "trigger.threads.above": T + "trigger: {threads: {above: @V@}}\n",
        "trigger.fds.above": T + "trigger: {fds: {above: @V@}}\n",
        "action": T + S + "action: @V@\n",
        "action.stop": T + S + "action: {stop: @V@}\n",
        "action.snapshot": T + S + "action: {snapshot: @V@}\n",
        "action.core": T + S + "action: {core: @V@}\n",
        "action.core.content": T + S + "action: {core: {content: @V@}}\n",
        "action.core.name": T + S + "action: {core: {name: @V@}}\n",
        "action.core.repeat": T + S + "action: {core: {repeat: @V@}}\n",
        "action.core.interval": T + S + "action: {core: {interval: @V@}}\n",
        "action.run": T + S + "action: {run: @V@}\n",
        "action.run.item": T + S + "action: {run: [/bin/true, @V@]}\n",
        "limits": T + S + "limits: @V@\n",
        "limits.max_cores": T + S + "limits: {max_cores: @V@}\n",
        "limits.min_interval": T + S + "limits: {min_interval: @V@}\n",
    }
    for field, tmpl in fields.items():
        for kind, value in wrong.items():
            if kind == "int" and field in ints:
                continue
            if kind == "neg" and field not in ints:
                continue
            if (
                field in ("target", "trigger", "trigger.cpu", "action", "action.core", "limits")
                and kind == "map"
            ):
                continue  # a mapping is the right type there
            if field in ("trigger.syscall",) and kind == "list":
                continue
            if field == "action.run" and kind == "list":
                continue
            if field == "action.run.item" and kind == "empty":
                continue  # an empty argument is a valid argv item
            put(f"type-{field}-{kind}.yaml", tmpl.replace("@V@", value))

    # hostile strings in every string field: refused, or accepted as plain data
    string_fields = {
        "name": "name: @V@\n" + T + S,
        "description": T + S + "description: @V@\n",
        "active": T + S + "active: @V@\n",
        "comm": "target: {comm: @V@}\n" + S,
        "exe": "target: {exe: @V@}\n" + S,
        "unit": "target: {unit: @V@}\n" + S,
        "cgroup": "target: {cgroup: @V@}\n" + S,
        "syscall": T + "trigger: {syscall: @V@}\n",
        "when": T + "trigger: {syscall: write, when: @V@}\n",
        "content": T + S + "action: {core: {content: @V@}}\n",
        "core-name": T + S + "action: {core: {name: @V@}}\n",
        "run": T + S + "action: {run: [/bin/true, @V@]}\n",
        "run-prog": T + S + "action: {run: [@V@]}\n",
    }
    for field, tmpl in string_fields.items():
        for i, s in enumerate(INJECT):
            quoted = "'" + s.replace("'", "''") + "'"
            put(f"inject-{field}-{i:02d}.yaml", tmpl.replace("@V@", quoted))
        # the same strings behind '/' (exe/cgroup must be absolute) and as a comm glob
        if field in ("exe", "cgroup", "run-prog"):
            for i, s in enumerate(INJECT):
                quoted = "'/" + s.replace("'", "''") + "'"
                put(f"inject-{field}-abs-{i:02d}.yaml", tmpl.replace("@V@", quoted))
    for i, s in enumerate(['");/*x*/#d*', "*/#define X*", "*`id`*", "*$(id)*", "*%n*", "*'\"*"]):
        quoted = "'" + s.replace("'", "''") + "'"
        put(f"inject-comm-glob-{i:02d}.yaml", "target: {comm: " + quoted + "}\n" + S)
    return out


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    for name, data in sorted(files().items()):
        (OUT / name).write_bytes(data)
    print(f"{len(list(OUT.iterdir()))} files in {OUT}")


if __name__ == "__main__":
    main()
