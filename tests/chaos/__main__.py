"""`python -m tests.chaos`: the full chaos run (`make chaos`), or one seed reproduced.

    python -m tests.chaos                        # MariaDB, then PostgreSQL, fresh seeds
    python -m tests.chaos --seed 7 --db mariadb  # reproduce a run
    python -m tests.chaos --quick ...            # the CI-sized storm (tests/chaos/test_chaos.py)

Exit status: 0 all invariants held, 1 a violation, 2 the run could not be made (a service
missing, the server not starting)."""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from tests.chaos.storm import FULL, QUICK, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--db", choices=("mariadb", "postgresql", "all"), default="all")
    parser.add_argument("--seed", type=int, help="default: a fresh random seed per database")
    parser.add_argument("--quick", action="store_true", help="the smaller CI storm")
    parser.add_argument("--report", type=Path, help="append a markdown summary to this file")
    args = parser.parse_args(argv)
    dbs = ("mariadb", "postgresql") if args.db == "all" else (args.db,)
    status = 0
    for db in dbs:
        seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
        quick = " --quick" if args.quick else ""
        print(
            f"=== chaos on {db}, seed {seed} (python -m tests.chaos --seed {seed} --db {db}"
            f"{quick})",
            flush=True,
        )
        directory = Path(tempfile.mkdtemp(prefix=f"surge-chaos-{db}-{seed}-"))
        try:
            result = run(QUICK if args.quick else FULL, seed, db, directory, args.quick)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            # tests.backends skips (fails under CI) on a missing service: here, an error
            print(f"chaos {db} seed {seed}: cannot run: {exc}", file=sys.stderr)
            status = max(status, 2)
            continue
        except Exception:
            traceback.print_exc()
            print(
                f"chaos {db} seed {seed}: the run broke (files kept in {directory}); "
                f"reproduce: python -m tests.chaos --seed {seed} --db {db}{quick}",
                file=sys.stderr,
            )
            status = max(status, 2)
            continue
        print(result.summary(), flush=True)
        if args.report is not None:
            with args.report.open("a") as sink:
                sink.write(result.markdown())
        if result.ok and not result.unknown:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"files kept in {directory}", flush=True)
        if not result.ok:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
