"""Where a Surge worker's time goes under gRPC and under HTTP GetOrder load: py-spy
samples (`--native`: C frames too) of one worker's event-loop thread, and the CPU time of
each of the worker's threads (`top -H`'s view, which also shows grpc's native threads).

grpc's Cython core (cygrpc) ships without symbols, so its frames are named by their
library only; the samples are therefore also sorted into where the loop thread was:
waiting in epoll (idle), in Surge's code (anything below a frame of src/surge), in
grpc's core (a cygrpc frame, no Surge frame), or elsewhere (the event loop, asyncio)."""

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
        spy += ["--native", "-f", "speedscope", "-o", str(out)]
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
    """Shares of the loop thread's samples: by function on top of the stack (self), by
    function anywhere on it (inclusive), and by where (`where`)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    where: Counter[str] = Counter()
    samples = 0.0
    for profile in data["profiles"]:
        if "MainThread" not in profile["name"]:
            continue
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            samples += weight
            names = [_name(frames[i]) for i in stack]
            own[names[-1]] += weight
            for name in set(names):
                total[name] += weight
            where[_where(names)] += weight
    share = max(1e-9, samples)
    return {
        "samples": round(samples, 2),  # seconds: py-spy weighs each sample by its interval
        "self": [(n, c / share) for n, c in own.most_common(TOP)],
        "inclusive": [(n, c / share) for n, c in total.most_common(3 * TOP)],
        "where": {k: round(v / share, 3) for k, v in where.most_common()},
    }


def _where(names: list[str]) -> str:
    """The owner of the innermost frame that has one (the entry point's frames have none)."""
    if names[-1].startswith(("epoll_wait ", "epoll_pwait ")):
        return "idle (epoll)"
    for name in reversed(names):
        if "(surge/" in name and "(surge/cli.py" not in name and "(surge/lifecycle" not in name:
            return "Surge's code"
        if "cygrpc" in name:
            return "grpc core"
        if "uvloop" in name or "(asyncio/" in name or "_asynciomodule" in name:
            return "event loop"
    return "other"


def _name(frame: dict[str, Any]) -> str:
    file = str(frame.get("file", ""))
    if str(frame["name"]).startswith("0x"):  # a library without symbols
        return f"[{Path(file).name.split('.')[0] or '?'}]"
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
