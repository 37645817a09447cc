"""snapd.probe in tests: a rule from its YAML body, and the events that arrive within a while."""

from __future__ import annotations

import time
from pathlib import Path

from snapd.probe import Event, Probes
from snapd.rules import Rule, parse_rule


def rule(text: str, name: str = "t") -> Rule:
    """The rule ``name: NAME`` + ``text``, which must parse without an error."""
    r, errors = parse_rule(f"name: {name}\n" + text, f"{name}.yaml")
    assert not errors, [str(e) for e in errors]
    assert r is not None
    return r


def drain(p: Probes, seconds: float = 0.3) -> list[Event]:
    """Everything that arrives within ``seconds`` (to show that nothing more does)."""
    out: list[Event] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out += p.poll(50)
    return out


def refusing_source(tmp_path: Path, entry: str) -> Path:
    """A copy of probe.bpf.c in ``tmp_path`` whose line ``entry`` (once in the source) became a
    NULL read, which every verifier refuses: how a test makes a kernel refuse one program.
    Its includes still resolve (layout.cflags' -I); the caller points probes.SOURCE at it."""
    from snapd.probe import probes as probes_mod

    text = probes_mod.SOURCE.read_text()
    assert text.count(entry) == 1, entry
    refused = tmp_path / "probe.bpf.c"
    refused.write_text(text.replace(entry, "    return *(volatile int *)0;  // refused: a NULL read\n"))
    return refused
