"""The jobs on disk: what each state file says, as rows for ``status``, ``list`` and ``clean``.

Reading never takes a job's lock (a status check must not make a starting job fail); whether
a job is running is read from the pid in its lock file. ``clean`` does take the lock, since it
deletes files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.progress import format_bytes

STATE_SUFFIX = ".eefetch.db"
TILES_SUFFIX = ".eefetch-tiles"  # engine.paths.tiles_folder of a default state file
MERGE_CHECKPOINT_SUFFIX = ".eefetch-merge.json"  # engine.live_merge.checkpoint_path


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as ``eefetch status`` shows it."""

    state: str
    output: str
    name: str
    status: str  # merged | downloaded | running | failed | planned | empty
    state_label: str  # what a person reads: done, fetching, failed, incomplete, ...
    running: bool
    tiles: dict[str, int]
    percent: float
    bytes_done: int
    expected_bytes: int
    tiles_on_disk: int
    output_exists: bool
    last_errors: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # see worker_rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_state_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Every ``*.eefetch.db`` under ``folder`` (sorted, so tables are stable)."""
    root = Path(folder)
    pattern = f"**/*{STATE_SUFFIX}" if recursive else f"*{STATE_SUFFIX}"
    return sorted(p for p in root.glob(pattern) if p.is_file())


def read_job(
    state_path: str | os.PathLike[str], errors: int = 5, *, job: str | None = None
) -> JobRow:
    """The row of one job: a state file's (read-only; works while the job runs), or job
    ``job`` of a state database on a server (its only job when not named)."""
    from engine.paths import tiles_folder, worker_tiles_folder
    from state import Store, is_database_url

    server = is_database_url(state_path)
    path = Path(state_path)
    with Store.open(state_path, job=job, create=False) as store:
        where = store.target if server else str(path.resolve())
        record = store.job()
        if record is None:
            name = job or _name(path)
            return JobRow(where, "", name, "empty", "empty", False, {}, 0.0, 0, 0, 0, False)
        counts = store.counts()
        done_bytes = store.bytes_done()
        last = [{"tile": t, "error": e} for t, e in store.last_errors(errors)]
        workers = worker_rows(store.workers(), store.now())
    output = Path(record.output_path)
    if server:
        running = any(w["state"] == "alive" for w in workers)
        folder = worker_tiles_folder(output)
    else:
        running = is_running(path)
        folder = tiles_folder(path)
    return JobRow(
        state=where,
        output=str(output),
        name=record.name if server else output.name,
        status=record.status,
        state_label=label(record.status, counts, running, output.exists()),
        running=running,
        tiles=counts,
        percent=percent_done(record.status, counts),
        bytes_done=done_bytes,
        expected_bytes=expected_bytes(record.spec),
        tiles_on_disk=_folder_bytes(folder),
        output_exists=output.exists(),
        last_errors=last,
        workers=workers,
    )


def job_names(state: str | os.PathLike[str]) -> list[str]:
    """The names of the jobs in a state database, oldest first."""
    from state import Store

    with Store.open(state, create=False) as store:
        return [record.name for record in store.jobs()]


MAX_WORKER_ROWS = 12


def worker_rows(workers: Sequence[Any], now: float) -> list[dict[str, Any]]:
    """What status shows of a job's workers (``state.WorkerRecord``s, ``now`` on the
    database's clock): alive ones first, then the most recently seen; each with its host,
    pid, tiles and bytes fetched, mean rate while it ran, seconds since it was last seen, and
    whether it is alive, stopped (ended on its own) or lost (stopped beating: killed, hung,
    cut off)."""
    rows = []
    for w in workers:
        lived = max(w.last_seen - w.started_at, 1e-9)
        state = "alive" if w.alive else ("stopped" if w.stopped_at is not None else "lost")
        rows.append(
            {
                "owner": w.owner,
                "host": w.host,
                "pid": w.pid,
                "tiles_done": w.tiles_done,
                "bytes_done": w.bytes_done,
                "bytes_per_second": w.bytes_done / lived if w.bytes_done else 0.0,
                "last_seen_ago": max(0.0, now - w.last_seen),
                "state": state,
            }
        )
    rows.sort(key=lambda r: (r["state"] != "alive", r["last_seen_ago"]))
    return rows[:MAX_WORKER_ROWS]


def worker_table(rows: Sequence[dict[str, Any]]) -> str:
    """The workers as aligned columns."""
    from engine.progress import format_seconds

    header = ("HOST", "PID", "TILES", "MB/S", "LAST SEEN", "STATE")
    body = [
        (
            str(r["host"]),
            str(r["pid"]),
            str(r["tiles_done"]),
            f"{r['bytes_per_second'] / 1e6:.1f}",
            f"{format_seconds(r['last_seen_ago'])} ago",
            str(r["state"]),
        )
        for r in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip()
        for r in [header, *body]
    )


def percent_done(status: str, counts: dict[str, int]) -> float:
    """Share of the tiles to fetch (split parents are not) that are done; 100 once merged."""
    if status == "merged":
        return 100.0
    leaves = sum(counts.get(k, 0) for k in ("pending", "in_flight", "done", "failed"))
    return 100.0 * counts.get("done", 0) / leaves if leaves else 0.0


def label(status: str, counts: dict[str, int], running: bool, output_exists: bool) -> str:
    """A word a person understands, from the job and tile statuses."""
    if status == "merged":
        return "done" if output_exists else "done, output missing"
    if running:
        return "merging" if status == "downloaded" else "fetching"
    if counts.get("failed"):
        return "failed tiles"
    if status == "downloaded":
        return "fetched, not merged"
    if counts.get("done"):
        return "stopped"
    return "not started"


def is_running(state_path: Path) -> bool:
    """Whether a live process holds the job (the pid its lock file names is alive)."""
    lock = Path(f"{state_path}.lock")
    try:
        pid = int(lock.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def table(rows: Sequence[JobRow]) -> str:
    """Aligned columns: name, state, tiles, percent, fetched, expected size."""
    header = ("JOB", "STATE", "TILES", "DONE", "FETCHED", "SIZE", "FAILED")
    body = [
        (
            row.name,
            row.state_label,
            f"{row.tiles.get('done', 0)}/{_leaves(row)}",
            f"{row.percent:.0f}%",
            format_bytes(row.bytes_done),
            format_bytes(row.expected_bytes),
            str(row.tiles.get("failed", 0)),
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join(lines)


def totals(rows: Sequence[JobRow]) -> str:
    """One line under the table: how many jobs are finished, and bytes."""
    finished = sum(1 for r in rows if r.status == "merged")
    failed = sum(1 for r in rows if r.tiles.get("failed"))
    fetched = sum(r.bytes_done for r in rows)
    line = f"{finished}/{len(rows)} jobs finished, {format_bytes(fetched)} fetched"
    if failed:
        line += f", {failed} with failed tiles (run the same command again to retry them)"
    return line


@dataclass(frozen=True, slots=True)
class Cleaned:
    state: Path
    removed: Path
    bytes: int


def clean(
    state_files: Iterable[Path],
    *,
    dry_run: bool = False,
    state_too: bool = False,
    folder: Path | None = None,
) -> tuple[list[Cleaned], list[str]]:
    """Remove tile folders of merged jobs whose output exists; skip everything else.

    With ``state_too`` the state file goes as well (the output then no longer knows it is
    finished: running the download again needs --overwrite). With ``folder``, what jobs
    whose state file is gone left under it goes too (see ``orphans``).
    """
    from engine.paths import tiles_folder
    from state import JobLock, JobLockedError, OutputLock, Store

    state_files = list(state_files)
    removed: list[Cleaned] = []
    skipped: list[str] = []
    if folder is not None:
        for state, target in orphans(folder, state_files):
            output = state.with_name(state.name.removesuffix(STATE_SUFFIX))
            try:
                # A job with another --state may be writing that output right now.
                with OutputLock(output):
                    removed.append(Cleaned(state, target, _remove(target, dry_run)))
            except JobLockedError:
                skipped.append(f"{target}: a job is writing {output}; kept")
    for path in state_files:
        with Store.open(path, create=False) as store:
            job = store.job()
        if job is None or job.status != "merged" or not Path(job.output_path).exists():
            if job is None:
                reason = "empty state file"
            elif job.status != "merged":
                reason = "not finished"
            else:
                reason = f"its output {job.output_path} is missing"
            skipped.append(f"{path}: {reason}; kept")
            continue
        try:
            with JobLock(path):
                targets = [tiles_folder(path)]
                if state_too:
                    targets += [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
                for target in targets:
                    if target.exists():
                        removed.append(Cleaned(path, target, _remove(target, dry_run)))
        except JobLockedError:
            skipped.append(f"{path}: a process is working on it; kept")
    return removed, skipped


def orphans(folder: Path, state_files: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(missing state file, leftover) for what jobs whose state file was deleted left behind.

    - An unfinished output a stopped run kept (``.OUT.eefetch-merge.tmp``) and its checkpoint
      (``.OUT.eefetch-merge.json``), when no state file in ``state_files`` writes OUT. Only a
      stopped run leaves the checkpoint (a running one deletes it when it starts), so a
      temporary file without one, which may be a running job's, is never touched.
    - A tile folder ``OUT.eefetch-tiles`` beside which ``OUT.eefetch.db`` no longer exists.
    """
    from engine.live_merge import checkpoint_path
    from engine.merge import OutputBuilder
    from engine.paths import default_state_path, tiles_folder

    claimed = {_resolved(path.with_name(_name(path))) for path in state_files}
    claimed |= {_resolved(Path(output)) for output in _outputs(state_files)}
    found: list[tuple[Path, Path]] = []
    for checkpoint in sorted(Path(folder).glob(f"**/.*{MERGE_CHECKPOINT_SUFFIX}")):
        output = checkpoint.with_name(checkpoint.name[1 : -len(MERGE_CHECKPOINT_SUFFIX)])
        if checkpoint_path(output) != checkpoint or _resolved(output) in claimed:
            continue
        temp = OutputBuilder.temp_for(output)
        state = default_state_path(output)
        found += [(state, item) for item in (temp, checkpoint) if item.is_file()]
    for tiles in sorted(Path(folder).glob(f"**/*{TILES_SUFFIX}")):
        state = tiles.with_name(tiles.name.removesuffix(TILES_SUFFIX) + STATE_SUFFIX)
        if tiles.is_dir() and tiles_folder(state) == tiles and not state.exists():
            found.append((state, tiles))
    return found


def _outputs(state_files: Iterable[Path]) -> list[str]:
    """The outputs the readable state files write (one with its own --state included)."""
    from state import StateError, Store

    outputs = []
    for path in state_files:
        try:
            with Store.open(path, create=False) as store:
                job = store.job()
        except StateError:
            continue
        if job is not None:
            outputs.append(job.output_path)
    return outputs


def _remove(target: Path, dry_run: bool) -> int:
    """Delete a file or folder (unless ``dry_run``); its size in bytes."""
    size = _folder_bytes(target) if target.is_dir() else target.stat().st_size
    if not dry_run:
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    return size


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


def _leaves(row: JobRow) -> int:
    return sum(row.tiles.get(k, 0) for k in ("pending", "in_flight", "done", "failed"))


def _name(path: Path) -> str:
    return path.name.removesuffix(STATE_SUFFIX)


_ITEMSIZES = {"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4,
              "float32": 4, "float64": 8}  # fmt: skip
"""Bytes per pixel of the types a job can have; numpy's import alone would cost `status` a
fifth of a second."""


def expected_bytes(spec: dict[str, Any]) -> int:
    """Bytes of the job's pixels uncompressed (0 for a spec this eefetch cannot read)."""
    try:
        grid = spec["grid"]
        return (
            int(grid["width"])
            * int(grid["height"])
            * len(spec["band_ids"])
            * _ITEMSIZES[spec["dtype"]]
        )
    except (KeyError, TypeError, ValueError):
        return 0


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    total = 0
    for item in folder.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            continue
    return total
