"""Every image of a collection, one GeoTIFF each, as one resumable run with one budget.

The state store holds one job per file, so a collection is a folder of ordinary jobs: one
GeoTIFF and one ``.eefetch.db`` per image. They run concurrently (``parallel_images`` at a
time) under one shared :class:`engine.pacing.AdaptiveLimiter`, so the whole collection stays
within ``concurrency`` requests in flight, and a 429 for any image slows all of them, as
Earth Engine's per-project quota requires. Running the same call again skips finished images
(their state says merged) and resumes the others tile by tile.

With ``state`` a PostgreSQL URL, every image's job lives in that database instead, named
``PREFIX.IMAGE`` (``image_job_name``), and the same collection command run on several machines
makes each of them a worker of every image (``engine.workers``): each tile is fetched once and
each image merged once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ee

from engine import ee_adapter
from engine.defaults import DEFAULT_PARALLEL_IMAGES, PROJECT_QUOTA
from engine.errors import EarthEngineError, EefetchError, InvalidJob, JobError, OtherJobError
from engine.job import JobResult, RunOptions, new_limiter, open_gate, run_job
from engine.paths import state_target
from engine.progress import Progress, SilentProgress
from engine.quota_gate import new_owner
from engine.spec import JobSpec
from state import default_job_name, is_database_url

MAX_NAME_CHARS = 120
MAX_JOB_NAME = 128  # state.schema.JOB_NAME
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True, slots=True)
class CollectionImage:
    """One image of the collection: how to name it and how to get it again."""

    index: str  # system:index, unique within the collection
    name: str  # safe file name without suffix
    properties: dict[str, Any] = field(hash=False)


@dataclass
class CollectionResult:
    """Per image, the job's result or why it did not finish."""

    out_dir: Path
    results: dict[str, JobResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # Images a JobError stopped (their state holds another download, an output is in the
    # way, ...): running the same command again cannot help them, unlike the rest of ``errors``.
    blocked: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return not self.errors and all(r.complete for r in self.results.values())

    @property
    def outputs(self) -> list[Path]:
        return [r.output for r in self.results.values() if r.output is not None]


def safe_name(text: str) -> str:
    """A file name from an image id or property: no separators, no '..', no hidden files.

    ``COPERNICUS/S2/2022_T50`` becomes ``COPERNICUS_S2_2022_T50``; anything outside
    ``[A-Za-z0-9._+-]`` becomes ``_``, so no name can leave the output folder.
    """
    normal = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    cleaned = UNSAFE.sub("_", normal).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned[:MAX_NAME_CHARS] or "image"


def image_names(
    infos: Sequence[dict[str, Any]],
    filenames: Sequence[str] | str | None = None,
    column: str | None = None,
) -> list[CollectionImage]:
    """Names as geemap gives them (a list, a prefix, a property, else system:index), made
    safe and unique."""
    listed = isinstance(filenames, Sequence) and not isinstance(filenames, str)
    if listed and len(filenames or ()) != len(infos):
        raise InvalidJob(
            f"{len(filenames or ())} filenames for {len(infos)} images; give one per image"
        )
    images: list[CollectionImage] = []
    taken: set[str] = set()
    for position, info in enumerate(infos):
        properties = dict(info.get("properties") or {})
        index = str(properties.get("system:index") or info.get("id") or position)
        if isinstance(filenames, Sequence) and not isinstance(filenames, str):
            raw = str(filenames[position])
        elif column is not None:
            if column not in properties:
                raise InvalidJob(
                    f"image {index} has no property {column!r}; choose another --name-property"
                )
            raw = str(properties[column])
        else:
            raw = index
        if isinstance(filenames, str):
            raw = filenames + raw
        base = safe_name(raw.removesuffix(".tif"))
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name.lower())
        images.append(CollectionImage(index, name, properties))
    return images


def list_images(
    collection: ee.ImageCollection,
    filenames: Sequence[str] | str | None = None,
    column: str | None = None,
) -> list[CollectionImage]:
    """The collection's images (one getInfo call)."""
    features = ee_adapter.collection_features(collection)
    if not features:
        raise EarthEngineError(
            "the collection is empty; check the dates, the cloud limit and the region"
        )
    return image_names(features, filenames, column)


def member(collection: ee.ImageCollection, index: str) -> ee.Image:
    """One image of a (filtered, mapped) collection by its system:index, with its mapping."""
    image: ee.Image = ee.Image(collection.filter(ee.Filter.eq("system:index", index)).first())
    return image


def collection_specs(
    collection: ee.ImageCollection,
    out_dir: Path,
    images: Sequence[CollectionImage],
    build: Any,
    workers: int = 8,
) -> list[tuple[CollectionImage, JobSpec]]:
    """One job spec per image (their getInfo calls run a few at a time)."""
    out_dir = out_dir.expanduser().resolve()

    def one(image: CollectionImage) -> tuple[CollectionImage, JobSpec]:
        output = out_dir / f"{image.name}.tif"
        if output.parent != out_dir:
            raise InvalidJob(f"image name {image.name!r} would leave {out_dir}")
        return image, build(member(collection, image.index), output)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(images)))) as pool:
        return list(pool.map(one, images))


def image_job_name(prefix: str, image_name: str) -> str:
    """The job name of one image of a collection whose state is on a server: ``PREFIX.IMAGE``
    in the characters a name allows, cut to its length with a hash of the whole kept (two long
    image names that share their start stay two jobs)."""
    whole = f"{prefix}.{image_name}"
    name = default_job_name(whole + ".tif")
    if len(whole) > MAX_JOB_NAME:
        digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
        name = f"{name[: MAX_JOB_NAME - 9]}-{digest}"
    return name


@dataclass(frozen=True, slots=True)
class Where:
    """Where a collection keeps its state: None, a file beside each image; else this
    PostgreSQL URL, each image a job named ``image_job_name(prefix, image)``."""

    state: str | None = None
    prefix: str = "collection"

    @classmethod
    def given(cls, state: str | None, job: str | None, folder: Path, option: str) -> Where:
        """Where the user's ``state`` and ``job`` keep the collection that goes to ``folder``
        (``option`` names the state argument in the error). A state file is refused: one
        file for every image would serialise them on its lock."""
        if state is not None and not is_database_url(state):
            raise InvalidJob(
                f"{option} for a collection is a PostgreSQL URL "
                f"(postgresql://user@host:port/db), got {state!r}; without it every image keeps "
                f"its state in a file beside it"
            )
        return cls(state, job or default_job_name(folder.name + ".tif"))

    def state_for(self, output: Path) -> Path | str:
        """The state of the job that writes ``output``: the server's, else the file beside it."""
        return state_target(self.state, output)

    def reworded(self, exc: OtherJobError, target: Path | str, name: str | None) -> OtherJobError:
        """``exc`` (the state of an image, or of a stacked store, holds another download) with
        what a collection can do: its arguments changed, so running it again cannot help."""
        how = f"it differs in {', '.join(exc.differs)}" if exc.differs else "the arguments changed"
        if self.state is None:
            advice = (
                f"{target} holds another download ({how}); write the collection to another "
                "folder with -o, or delete the state files (*.eefetch.db) there and run it "
                "again with --overwrite"
            )
        else:
            advice = (
                f"job {name} in the --state database is another download ({how}); give the "
                "collection another --job name"
            )
        return OtherJobError(advice, exc.differs)

    def target(self, image: CollectionImage, spec: JobSpec) -> tuple[Path | str, str | None]:
        """The state and the job name of one image."""
        if self.state is None:
            return self.state_for(Path(spec.output)), None
        return self.state, image_job_name(self.prefix, image.name)


async def run_collection(
    jobs: Sequence[tuple[CollectionImage, JobSpec]],
    out_dir: Path,
    options: RunOptions,
    progress: Progress | None = None,
    parallel_images: int = DEFAULT_PARALLEL_IMAGES,
    where: Where | None = None,
) -> CollectionResult:
    """Run every image's job, ``parallel_images`` at once, under one shared limiter and one
    door to the project's quota (in the server database when ``where`` names one)."""
    progress = progress or SilentProgress()
    where = where or Where()
    quota = options.quota
    if quota is None:
        quota_at = where.state_for(out_dir / "images.tif")
        quota = await open_gate(quota_at, options, new_owner())
    try:
        limiter = options.limiter or new_limiter(
            options.concurrency, quota.ceiling or PROJECT_QUOTA
        )
        shared = replace(options, limiter=limiter, quota=quota)
        return await _run_images(jobs, out_dir, shared, progress, parallel_images, where)
    finally:
        if options.quota is None:
            await quota.close()


async def _run_images(
    jobs: Sequence[tuple[CollectionImage, JobSpec]],
    out_dir: Path,
    shared: RunOptions,
    progress: Progress,
    parallel_images: int,
    where: Where,
) -> CollectionResult:
    """``run_collection`` with its budgets open."""
    gate = asyncio.Semaphore(max(1, parallel_images))
    overall = CollectionProgress(progress)
    result = CollectionResult(out_dir)

    async def one(image: CollectionImage, spec: JobSpec) -> None:
        async with gate:
            target, name = where.target(image, spec)
            try:
                job = await run_job(spec, target, shared, overall.child(image.name), job=name)
            except (EefetchError, OSError) as exc:
                if isinstance(exc, JobError):  # running the same command again cannot help
                    result.blocked.add(image.name)
                if isinstance(exc, OtherJobError):
                    exc = where.reworded(exc, target, name)
                result.errors[image.name] = " ".join(str(exc).split())
                progress.note(f"{image.name}: {result.errors[image.name]}")
            else:
                result.results[image.name] = job
                if job.complete:
                    progress.note(f"{image.name}: {job.output}")

    try:
        async with asyncio.TaskGroup() as group:
            for image, spec in jobs:
                group.create_task(one(image, spec))
    finally:
        progress.close()
    order = [image.name for image, _ in jobs]
    result.results = {n: result.results[n] for n in order if n in result.results}
    return result


class CollectionProgress:
    """One progress display for all images: totals grow as each image's job starts."""

    def __init__(self, parent: Progress) -> None:
        self.parent = parent
        self.started = False

    def child(self, name: str) -> Progress:
        return _ChildProgress(self, name)

    def ensure_started(self) -> None:
        if not self.started:
            self.started = True
            self.parent.start(0, 0, 0)


class _ChildProgress:
    """One image's view of the shared display; closing it leaves the shared one open."""

    def __init__(self, owner: CollectionProgress, name: str) -> None:
        self.owner = owner
        self.name = name

    def start(self, total_tiles: int, done_tiles: int, done_bytes: int) -> None:
        self.owner.ensure_started()
        self.owner.parent.tiles_added(total_tiles)
        for _ in range(done_tiles):
            self.owner.parent.tile_done(0)

    def tile_done(self, nbytes: int) -> None:
        self.owner.parent.tile_done(nbytes)

    def tiles_added(self, count: int) -> None:
        self.owner.parent.tiles_added(count)

    def note(self, message: str) -> None:
        self.owner.parent.note(f"{self.name}: {message}")

    def retry(self, message: str) -> None:
        self.owner.parent.retry(f"{self.name}: {message}")

    def close(self) -> None:
        pass
