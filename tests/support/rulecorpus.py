"""The malformed and hostile rule corpus of tests/security.

Two halves. The hand-made seeds are files in tests/security/corpus/, one kind of bad input each,
read as written: a truncated quote, small YAML bombs, NUL bytes, other encodings and BOMs,
escape sequences in keys, duplicate keys at every level. The rest is generated here, at
collection time, from tables and from the seeds: valid-good.yaml cut at many points, every field
with every wrong type, hostile strings in every string field, tags, invalid UTF-8, nesting and
sizes up to the file cap. Names say what each file is: ``valid-*`` must load, ``inject-*`` may
load or not (the kernel test loads the ones that do), every other file must be refused with
RuleErrors only. A new kind of bad input goes in as a seed file, or here when it is a family.

    PYTHONPATH=tests .venv/bin/python -m support.rulecorpus DIR    # write it all out, to look at
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from support.paths import TESTS

SEEDS = TESTS / "security" / "corpus"
CAP = 256 * 1024  # snapd.rules.MAX_FILE_BYTES

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


@functools.cache
def generated() -> dict[str, bytes]:
    """The generated half of the corpus: name -> content (deterministic)."""
    good = (SEEDS / "valid-good.yaml").read_text()
    out: dict[str, bytes] = {}

    def put(name: str, text: str | bytes) -> None:
        out[name] = text.encode() if isinstance(text, str) else text

    # truncated documents: valid-good.yaml cut at 24 points (each misses a required part or
    # ends inside a token)
    cuts = [good.index("trigger:") - k for k in (1, 5, 20, 40)]
    cuts += [good.index("trigger:") + k for k in (3, 8, 9, 12, 20, 28)]
    cuts += [good.index("when:") + k for k in (7, 14, 17)]
    cuts += [good.index("count:") + k for k in (6,)]
    cuts += [good.index("core:") + k for k in (7, 21, 30, 45, 60)]
    cuts += [good.index("run:") + k for k in (7, 12)]
    cuts += [good.index("limits:") + k for k in (10, 30)]
    cuts += [good.index("active:") + k for k in (10,)]
    for i, c in enumerate(cuts):
        put(f"truncated-{i:02d}.yaml", good[:c])

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

    # a YAML bomb of many aliases of one big scalar (the small bombs are seeds)
    big = "x" * 60_000
    put(
        "bomb-quadratic.yaml",
        f"description: &d '{big}'\n" + T + S + "k: [" + ", ".join(["*d"] * 3000) + "]\n",
    )

    # tags, on a plain field and on a mapping
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

    # invalid UTF-8 (other encodings, NUL bytes, CRLF and BOMs are seeds)
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


def seeds() -> dict[str, bytes]:
    """The hand-made half: tests/security/corpus/NAME -> content."""
    return {p.name: p.read_bytes() for p in sorted(SEEDS.iterdir())}


def corpus() -> dict[str, bytes]:
    """Every file of the corpus: the seeds and what is generated."""
    made, given = generated(), seeds()
    both = sorted(set(made) & set(given))
    if both:
        raise AssertionError(f"generated files would replace seeds: {both}")
    return {**given, **made}


def names() -> list[str]:
    return sorted(corpus())


def write(directory: Path) -> Path:
    """Write the whole corpus into ``directory`` (created); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in corpus().items():
        (directory / name).write_bytes(data)
    return directory


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m support.rulecorpus DIR", file=sys.stderr)
        return 2
    out = write(Path(argv[0]))
    print(f"{len(list(out.iterdir()))} files in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
