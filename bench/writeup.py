"""What every harness writes into BENCHMARKS.md: the machine line, tables, the commands,
and the rewriting of its own section between markers."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "wrk": _first_line(["wrk", "-v"]).split(" [")[0],
        "go": _first_line(["go", "version"]),
        "mariadb": _first_line(["mariadb", "-uroot", "-N", "-e", "SELECT VERSION()"]),
        "redis": _first_line(["redis-server", "--version"]),
    }


def machine_line(m: Mapping[str, str]) -> str:
    """The report's one-line description of `machine()`."""
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}, "
        f"{m['wrk']}, {m['go']}, MariaDB {m['mariadb']}, {m['redis'].split(' sha')[0]}."
    )


def rewrite_section(path: Path, start: str, end: str, body: str, header: str) -> None:
    """Replaces the text between the markers (adding them, or the file, when missing)."""
    text = path.read_text() if path.exists() else header
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n")


def markdown_table(head: Sequence[str], rows: Iterator[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def commands_section(commands: Sequence[str]) -> list[str]:
    """The closing part of every report: the commands the run used, as a code block."""
    return ["### Commands", "", "```", *commands, "```"]
