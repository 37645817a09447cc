"""The malformed-rule corpus (support.rulecorpus: the seeds in tests/security/corpus/ and what
is generated from them at collection time): every file is refused with RuleErrors naming
file:line:col (or, for valid-*/inject-*, loaded), in bounded time and memory, and nothing else
is ever raised."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapd.rules import MAX_FILE_BYTES, RuleError, check_file
from support import rulecorpus
from support.budget import parse_cpu, yaml_cpu_budget

FILES = rulecorpus.names()
MEM_LIMIT = 1 << 30  # RLIMIT_AS of the subprocess that loads the whole corpus
RSS_GROWTH_MIB = 64  # what loading all of it may add to that process's peak RSS


def test_corpus_is_varied() -> None:
    kinds = {n.split("-")[0] for n in FILES}
    assert {"truncated", "deep", "huge", "bomb", "tag", "enc", "nul", "dup", "type", "inject"} <= kinds
    # the seeds are kept as files, the families generated: neither shadows the other
    assert set(rulecorpus.seeds()).isdisjoint(rulecorpus.generated())


@pytest.fixture(scope="module")
def cpu_budget() -> Callable[[int], float]:
    return yaml_cpu_budget()


@pytest.mark.parametrize("name", FILES)
def test_corpus_file(name: str, rule_corpus: Path, cpu_budget: Callable[[int], float]) -> None:
    path = rule_corpus / name
    data = path.read_bytes()
    # anything but RuleError fails the test right here
    (rule, errors), cpu, budget = parse_cpu(lambda: check_file(path), len(data))
    assert cpu < budget, f"{name}: {cpu:.2f}s of CPU, more than {budget:.2f}s for its size here"
    assert (rule is None) == bool(errors)
    if name.startswith("valid-"):
        assert rule is not None, [str(e) for e in errors]
    elif not name.startswith("inject-"):
        assert errors, f"{name} was accepted: {rule}"
    nlines = data.count(b"\n") + data.count(b"\r") + 2
    for e in errors:
        assert type(e) is RuleError
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: \S", str(e)), str(e)
        assert 1 <= e.line <= nlines and e.col >= 1, (e.line, e.col, str(e))
        assert "\n" not in str(e) and "Traceback" not in str(e)
        # the message is one printable line: what the file says is quoted with escapes
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\ufeff]", str(e)), repr(str(e))
        assert len(str(e)) < 1000, f"{name}: message of {len(str(e))} characters"


_LOADER = """
import json, resource, sys, time
from pathlib import Path
from snapd.rules import check_file
corpus = Path(sys.argv[1])
check_file(corpus / "valid-good.yaml")  # imports and caches warmed up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = []
for p in sorted(corpus.iterdir()):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rule, errors = check_file(p)
    out.append((p.name, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, len(errors)))
print(json.dumps({"base_kib": base, "files": out}))
"""


@pytest.mark.slow
def test_corpus_memory_bounded(rule_corpus: Path) -> None:
    """The whole corpus in one process under RLIMIT_AS = 1 GiB: it finishes, and no file raises
    the peak RSS by more than a few MiB (a bomb that expanded would take GiBs)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))

    r = subprocess.run(
        [sys.executable, "-c", _LOADER, str(rule_corpus)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    growth = {name: kib for name, kib, _ in res["files"]}
    total = sum(growth.values()) // 1024
    worst = max(growth.items(), key=lambda kv: kv[1])
    assert total < RSS_GROWTH_MIB, f"peak RSS grew {total} MiB over the corpus; worst {worst}"
    assert len(res["files"]) == len(FILES)


def test_over_cap_file_not_read_whole(tmp_path: Path, cpu_budget: Callable[[int], float]) -> None:
    """A 64 MiB rule file costs what 256 KiB does: it is never read past the cap."""
    p = tmp_path / "big.yaml"
    with open(p, "wb") as f:
        f.truncate(64 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0 = time.process_time()
    _, errors = check_file(p)
    assert time.process_time() - c0 < cpu_budget(MAX_FILE_BYTES)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 16 << 10
    assert str(errors[0]) == f"{p}:1:1: file is larger than {MAX_FILE_BYTES} bytes; a rule file is small"


def test_check_prints_hostile_names_and_keys_safely(tmp_path: Path, snapd_cmd: list[str]) -> None:
    seeds = rulecorpus.SEEDS
    """`snapd check` on files someone else wrote: a file name with an escape sequence, a
    newline and a byte that is not UTF-8, and keys/placeholders with escapes, give one
    printable line per problem (before the fix: raw ESC [ 2 J on the terminal, and a
    UnicodeEncodeError traceback for the undecodable file name)."""
    d = tmp_path / "rules"
    d.mkdir()
    evil = os.fsdecode(b"\x1b[2J\n\xff")
    (d / f"{evil}.yaml").write_bytes((seeds / "ctl-escape-in-key.yaml").read_bytes())
    (d / f"ok-{evil}.yaml").write_text("name: fine\ntarget: {comm: x}\ntrigger: {every: 10s}\n")
    (d / "placeholder.yaml").write_bytes((seeds / "ctl-escape-in-placeholder.yaml").read_bytes())
    r = subprocess.run(
        [*snapd_cmd, "check", "--no-load", str(d)],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
    )
    out = r.stdout.decode("utf-8")  # strict: nothing undecodable was printed
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e\udc80-\udcff]", out), repr(out)
    lines = out.splitlines()
    assert len(lines) == 4, lines  # the first file: its stem is no rule name, and the key
    assert any(line.endswith(": ok") and "\\x1b[2J\\n\\udcff" in line for line in lines), lines
    assert any("unknown key '\\x1b[2J\\x9b\\u202e'" in line for line in lines), lines
    assert any("unknown placeholder '{\\x1b[2J}'" in line for line in lines), lines
