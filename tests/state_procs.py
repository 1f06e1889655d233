"""Worker processes for the state tests: `python tests/state_procs.py COMMAND ARGS...`.

Each command opens the state given on the command line the way a real worker would (its own
process, its own connections), does one kind of work and prints JSON lines the test reads.
`--skew S` first makes this process's `time.time()` run S seconds off, as a machine with a
wrong clock would; the database's clock is not affected.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def claim_all(target: str, job: str, owner: str, batch: int, lease: float) -> None:
    """Claim and finish tiles until none is left to claim; prints every batch's ids."""
    from state import Store, TileDone

    with Store.open(target, job=job, create=False) as store:
        while True:
            tiles = store.claim(owner, None, lease, batch)
            if not tiles:
                break
            _say(claimed=[t.id for t in tiles])
            store.apply([TileDone(t.id, f"{t.id}.tif", 1, "ab" * 32) for t in tiles])
    _say(finished=True)


def claim_hold(target: str, job: str, owner: str, count: int, lease: float, mode: str) -> None:
    """Claim `count` tiles (on the database's clock, or on this process's with mode 'own'),
    print them, then renew on the same clock each time a line arrives on stdin, until stdin
    closes or the process is killed."""
    from state import Store

    with Store.open(target, job=job, create=False) as store:

        def now() -> float | None:
            return time.time() if mode == "own" else None

        tiles = store.claim(owner, now(), lease, count)
        _say(claimed=[t.id for t in tiles], expires=[t.claim_expires for t in tiles])
        for _line in sys.stdin:
            _say(renewed=store.renew_claims(owner, now(), lease))


def merge_race(target: str, job: str, owner: str, wins: int) -> None:
    """Try for the merge lease until this process held it `wins` times; prints each holding
    as a monotonic interval (the clock every process of this machine shares)."""
    from state import Store

    with Store.open(target, job=job, create=False) as store:
        held = 0
        while held < wins:
            if not store.acquire_merge(owner, 30.0):
                time.sleep(0.002)
                continue
            start = time.monotonic()
            lease = store.merge_lease()
            time.sleep(0.01)
            end = time.monotonic()
            _say(start=start, end=end, seen=None if lease is None else lease.owner)
            if not store.release_merge(owner):
                _say(error="lost the lease it held")
            held += 1


def merge_hold(target: str, job: str, owner: str, lease: float) -> None:
    """Take the merge lease, say so, and wait to be killed."""
    from state import Store

    with Store.open(target, job=job, create=False) as store:
        _say(acquired=store.acquire_merge(owner, lease))
        sys.stdin.read()


def quota_hammer(
    target: str, project: str, owner: str, threads: int, rounds: int, refused_mark: str
) -> None:
    """`threads` threads each take and give back a slot `rounds` times, holding it a few
    milliseconds; prints every holding as a monotonic interval and the refusals. The first
    refusal creates the file `refused_mark`, so a test can wait for it instead of guessing."""
    from state import Quota

    intervals: list[tuple[float, float]] = []
    refused = [0]
    lock = threading.Lock()
    with Quota.open(target) as quota:

        def run(k: int) -> None:
            done = 0
            while done < rounds:
                slot = quota.acquire_slot(project, f"{owner}-{k}", 30.0)
                if slot is None:
                    with lock:
                        refused[0] += 1
                        if refused[0] == 1:
                            Path(refused_mark).touch()
                    time.sleep(0.001)
                    continue
                start = time.monotonic()
                time.sleep(0.002)
                end = time.monotonic()
                quota.release_slot(project, f"{owner}-{k}", slot, outcome="success")
                with lock:
                    intervals.append((start, end))
                done += 1

        workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    _say(intervals=intervals, refused=refused[0])


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--skew":
        skew = float(argv[1])
        real = time.time
        time.time = lambda: real() + skew
        argv = argv[2:]
    command, *args = argv
    if command == "claim-all":
        claim_all(args[0], args[1], args[2], int(args[3]), float(args[4]))
    elif command == "claim-hold":
        claim_hold(args[0], args[1], args[2], int(args[3]), float(args[4]), args[5])
    elif command == "merge-race":
        merge_race(args[0], args[1], args[2], int(args[3]))
    elif command == "merge-hold":
        merge_hold(args[0], args[1], args[2], float(args[3]))
    elif command == "quota-hammer":
        quota_hammer(args[0], args[1], args[2], int(args[3]), int(args[4]), args[5])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
