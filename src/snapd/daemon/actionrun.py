"""``action.run``: a program run after a core is published, its output logged.

An argv, never a shell. The placeholders the rule loader accepts
(:data:`snapd.rules.builder.RUN_PLACEHOLDERS`) are replaced literally and every other character,
a lone ``{`` included, is kept: nothing a rule or a target chose is interpreted. It runs in its
own thread, so a slow program holds neither the loop nor the next dump.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading

from snapd.rules.builder import RUN_PLACEHOLDERS

log = logging.getLogger("snapd")

RUN_TIMEOUT_S = 60.0
_PLACEHOLDER = re.compile(r"\{(" + "|".join(RUN_PLACEHOLDERS) + r")\}")


def expand_argv(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in argv]


def run_action(argv: tuple[str, ...], *, core: str, rule: str, pid: int, comm: str) -> None:
    args = expand_argv(argv, {"core": core, "rule": rule, "pid": str(pid), "comm": comm})

    def go() -> None:
        try:
            r = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            out = (r.stdout + r.stderr).strip().replace("\n", " | ")[:2000]
            log.info("rule %s: run %s: exit %d%s", rule, args[0], r.returncode, f": {out}" if out else "")
        except (OSError, subprocess.SubprocessError) as err:
            log.error("rule %s: run %s: %s", rule, args[0], err)

    threading.Thread(target=go, name="snapd-run", daemon=True).start()
