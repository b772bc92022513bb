"""Benchmark: headers read, signature-checked and turned into file lists, per second.

Runs over every rpm and header-only file of the conformance corpus, trusting
every key the corpus holds, and prints usrview's rate beside ``rpmkeys
--checksig`` on the same files (rpm 4.18 reads fewer of them: it cannot parse
v6 or ECDSA signatures, which it reports as failures, quickly).

    .venv/bin/python tests/bench_checksig.py [--rounds N] [--jobs N]

Not a test: it prints figures, it asserts nothing.  The goal (issue 2) is
2,000 headers/s on this 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.corpus import manifest  # noqa: E402
from tests.prereq import conformance_path  # noqa: E402
from verifier import sigcheck  # noqa: E402
from verifier.keyring import Keyring  # noqa: E402

KEY_SUFFIXES = (".asc", ".pub", ".pgp")


def corpus_files(root: Path) -> tuple[list[Path], list[Path]]:
    files, keys = [], set()
    for case in manifest(root):
        path = root / case.file
        if case.expected == "key":
            if path.suffix in KEY_SUFFIXES:
                keys.add(path)
        elif path.is_file() and path not in files:
            files.append(path)
    return files, sorted(keys)


_RING: Keyring | None = None


def _init(keys: list[Path]) -> None:
    global _RING
    _RING = Keyring.load(keys)


def _work(args: tuple[list[str], int]) -> tuple[int, dict[str, int]]:
    paths, rounds = args
    verdicts: dict[str, int] = {}
    n = 0
    for _ in range(rounds):
        for p in paths:
            r = sigcheck.check_file(p, _RING)
            if r.package is not None and r.verdict is not sigcheck.Verdict.PARSE:
                r.package.files  # build the file list
            verdicts[r.verdict.value] = verdicts.get(r.verdict.value, 0) + 1
            n += 1
    return n, verdicts


def bench_usrview(files: list[Path], keys: list[Path], rounds: int, jobs: int) -> tuple[float, dict]:
    paths = [str(p) for p in files]
    shares = [(paths[i::jobs], rounds) for i in range(jobs)]
    with ProcessPoolExecutor(jobs, initializer=_init, initargs=(keys,)) as pool:
        list(pool.map(_work, [(s[0], 1) for s in shares]))  # warm up: load keys, page cache
        t0 = time.perf_counter()
        results = list(pool.map(_work, shares))
        elapsed = time.perf_counter() - t0
    total = sum(n for n, _ in results)
    verdicts: dict[str, int] = {}
    for _, v in results:
        for k, c in v.items():
            verdicts[k] = verdicts.get(k, 0) + c // rounds
    return total / elapsed, verdicts


def bench_rpmkeys(files: list[Path], keys: list[Path], rounds: int) -> tuple[float, int, int] | None:
    if shutil.which("rpmkeys") is None:
        return None
    with tempfile.TemporaryDirectory() as db:
        imported = 0
        for key in keys:
            r = subprocess.run(["rpmkeys", "--dbpath", db, "--import", str(key)],
                               capture_output=True)
            imported += r.returncode == 0
        cmd = ["rpmkeys", "--dbpath", db, "--checksig", *map(str, files)]
        subprocess.run(cmd, capture_output=True)  # warm up
        t0 = time.perf_counter()
        for _ in range(rounds):
            r = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
    ok = sum(1 for line in r.stdout.splitlines() if line.rstrip().endswith(" OK"))
    return len(files) * rounds / elapsed, imported, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    root = conformance_path()
    if root is None:
        print("the conformance corpus is absent", file=sys.stderr)
        return 2
    files, keys = corpus_files(root)
    print(f"corpus: {len(files)} packages and header-only files, {len(keys)} key files; "
          f"{args.rounds} rounds, {args.jobs} processes")
    rate1, _ = bench_usrview(files, keys, args.rounds, 1)
    rate, verdicts = bench_usrview(files, keys, args.rounds, args.jobs)
    print(f"usrview checksig (1 process):   {rate1:8.0f} headers/s")
    print(f"usrview checksig ({args.jobs} processes):  {rate:8.0f} headers/s   verdicts per round: "
          + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    rk = bench_rpmkeys(files, keys, max(1, args.rounds // 4))
    if rk is None:
        print("rpmkeys: not installed")
    else:
        rrate, imported, ok = rk
        print(f"rpmkeys --checksig (1 process): {rrate:8.0f} headers/s   "
              f"({imported} of {len(keys)} keys imported; {ok} files 'OK')")
        print(f"ratio usrview/rpmkeys: {rate / rrate:.1f}x")
    print(f"goal 2,000 headers/s: {'met' if rate >= 2000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
