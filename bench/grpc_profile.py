"""Where a Surge worker's time goes under gRPC and under HTTP GetOrder load: py-spy
samples of one worker (its Python threads), and the CPU time of each of its threads
(`top -H`'s view, which also shows grpc's native threads that py-spy cannot name)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import common
from bench.common import OUT, ROOT, THREADS
from bench.wrk import wrk_argv

if TYPE_CHECKING:
    from bench.grpc_orders import GrpcBench

PY_SPY = common.SURGE_BIN.parent / "py-spy"
TOP = 12  # functions listed per face


def profile_faces(bench: GrpcBench, connections: int, seconds: float) -> dict[str, Any]:
    """For each face: py-spy on the first worker for `seconds` while that face is under
    load at `connections`, then the profile's top functions and the worker's threads."""
    found: dict[str, Any] = {}
    for face in ("grpc", "http"):
        worker = bench.worker_pids()[0]
        if face == "grpc":
            load = bench.grpcload_argv(connections, seconds + 4)
        else:
            url = f"http://127.0.0.1:{bench.surge_port}"
            load = wrk_argv(url, bench.scripts["hit-surge"], connections, seconds + 4, THREADS)
        out = OUT / f"grpc-profile-{face}.speedscope.json"
        spy = [str(PY_SPY), "record", "-d", f"{seconds:g}", "-p", str(worker)]
        spy += ["-f", "speedscope", "-o", str(out)]
        shown = shlex.join([".venv/bin/py-spy", *spy[1:]]).replace(str(worker), "WORKER_PID")
        bench.note(shown.replace(str(ROOT) + "/", "") + f"  # under {face} load")
        with subprocess.Popen(load, cwd=ROOT, stdout=subprocess.DEVNULL) as client:
            try:
                time.sleep(2.0)
                threads_before = thread_cpu(worker)
                common.run(spy, timeout=seconds + 60)
                threads = _delta(thread_cpu(worker), threads_before)
            finally:
                client.wait(timeout=seconds + 60)
        found[face] = {**top_functions(out), "threads": threads, "seconds": seconds}
        print(f"  profile under {face} load: {out.relative_to(ROOT)}")
        for name, share in found[face]["self"][:5]:
            print(f"    {share:5.1%}  {name}")
    return found


def top_functions(path: Path) -> dict[str, Any]:
    """Self and inclusive shares of the samples, by function, over every thread."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            samples += weight
            names = [_name(frames[i]) for i in stack]
            own[names[-1]] += weight
            for name in set(names):
                total[name] += weight
    share = max(1, samples)
    return {
        "samples": samples,
        "self": [(n, c / share) for n, c in own.most_common(TOP)],
        "inclusive": [(n, c / share) for n, c in total.most_common(3 * TOP)],
    }


def _name(frame: dict[str, Any]) -> str:
    file = str(frame.get("file", ""))
    for marker in ("site-packages/", "/src/", "python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{frame['name']} ({file}:{frame.get('line', 0)})" if file else str(frame["name"])


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, by thread name (same names summed)."""
    ticks: Counter[str] = Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rpartition(")")[2].split()
        ticks[name] += int(fields[11]) + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    return {name: n / hz for name, n in ticks.items()}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    changed = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in changed.items() if v > 0), key=lambda kv: -kv[1]))
