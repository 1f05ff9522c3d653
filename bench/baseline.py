"""The Go baseline of ../shared/baseline: built once into bench/bin, then reused."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable

from bench import common
from bench.common import ROOT

BUILD_SCRIPT = ROOT.parent / "shared" / "baseline" / "build.sh"
BIN = ROOT / "bench" / "bin"
PROGRAMS = ("orderserver", "chatserver", "wsclient")


def ensure_built(note: Callable[[str], None]) -> None:
    """Builds the three programs unless bench/bin has them; `note` records the command."""
    build = ["bash", os.path.relpath(BUILD_SCRIPT, ROOT), "bench/bin"]
    if all((BIN / program).exists() for program in PROGRAMS):
        note(f"{shlex.join(build)}  # skipped: bench/bin has the programs")
        return
    if not BUILD_SCRIPT.exists():
        common.fail(f"no Go baseline at {BUILD_SCRIPT}")
    print("building the Go baseline ...")
    # an absolute output directory: the script builds inside each program's own directory,
    # where a relative one would land
    common.run(["bash", str(BUILD_SCRIPT), str(BIN)], timeout=900)
    note(shlex.join(build))
