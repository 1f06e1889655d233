"""What a job is: everything needed to fetch it again without the user's script.

A :class:`JobSpec` is stored in the state database as JSON. Its fingerprint is the identity
of "the same job": everything that changes a pixel of the output, and nothing else
(docs/CONTRACTS.md, "The job fingerprint"). Settings that only change how fast it runs
(concurrency, proxy, timeouts) or how it is cut into requests (endpoint, max_tile_bytes,
max_tile_dim: the stored plan already fixes the tiles) do not count, so a user can change them
between runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from engine.defaults import (
    DEFAULT_COMPRESSION,
    DEFAULT_CONCURRENCY,
    EE_MAX_REQUEST_BYTES,
    EE_MAX_SIDE_URLS,
)
from engine.errors import SpecError
from engine.grid import Grid
from engine.service import GOOGLE, service_identity

Endpoint = Literal["urls", "compute"]
PLAN_EXTRA = ("max_tile_dim",)  # keys of JobSpec.extra that only shape the plan
# Keys of JobSpec.extra that describe the job without deciding a pixel: EE's image properties
# (written as metadata; EE may update them between runs), the workload tag (labels the
# requests' cost), why this nodata value was chosen, a stack's per-image properties. Not in
# the fingerprint.
DESCRIPTIVE_EXTRA = ("metadata", "workload_tag", "nodata_note", "time_properties")
# Key of JobSpec.extra holding the region's outline (GeoJSON, simplified) for pictures of the
# job (engine.jobmap). The grid already holds what the region decides of the pixels.
REGION_EXTRA = "region"
NOT_IN_IDENTITY = (*PLAN_EXTRA, REGION_EXTRA, *DESCRIPTIVE_EXTRA)


@dataclass(frozen=True, slots=True)
class JobSpec:
    expression: str  # the user's image, serialized by the earthengine-api client
    grid: Grid
    band_ids: tuple[str, ...]
    dtype: str
    nodata: float | int  # normalised to a value of dtype (see nodata_value)
    output: str  # absolute path of the GeoTIFF to write
    endpoint: Endpoint = "urls"
    max_tile_bytes: int = EE_MAX_REQUEST_BYTES
    plan_concurrency: int = DEFAULT_CONCURRENCY
    compress: str = DEFAULT_COMPRESSION
    cog: bool = False
    keep_tiles: bool = False
    ee_url: str | None = None
    project: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # engine.service.service_identity of where the tiles come from; None: that of ee_url
    # (what state files written before this field hold).
    service: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodata", nodata_value(self.nodata, self.dtype))
        if self.service is None:
            object.__setattr__(self, "service", service_identity(self.ee_url))

    @property
    def output_format(self) -> str:
        """``geotiff`` or ``zarr`` (``engine.outputs`` picks the writer from it)."""
        return str(self.extra.get("format", "geotiff"))

    @property
    def mask_band(self) -> bool:
        """Whether the last band is EE's mask, written as a GDAL mask (``--mask-band``)."""
        return bool(self.extra.get("mask_band"))

    @property
    def data_bands(self) -> tuple[str, ...]:
        """The bands written as data: all of them but a fetched mask band."""
        return self.band_ids[:-1] if self.mask_band else self.band_ids

    def fingerprint(self) -> str:
        """Hash of what decides the pixels; not of how they are fetched or cut into tiles."""
        text = json.dumps(self._identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _identity(self) -> dict[str, Any]:
        return {
            "expression": self.expression,
            "grid": _grid_dict(self.grid),
            "band_ids": list(self.band_ids),
            "dtype": self.dtype,
            "nodata": repr(self.nodata),
            "output": self.output,
            "service": self.service,
            "extra": {k: v for k, v in self.extra.items() if k not in NOT_IN_IDENTITY},
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = _grid_dict(self.grid)
        data["band_ids"] = list(self.band_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """The spec stored in a state file; SpecError if it cannot run (an older eefetch
        accepted some jobs that cannot finish)."""
        values = dict(data)
        grid = values.pop("grid")
        values["grid"] = Grid(
            grid["crs"], tuple(grid["transform"]), int(grid["width"]), int(grid["height"])
        )
        values["band_ids"] = tuple(values["band_ids"])
        known = {name for name in cls.__dataclass_fields__}
        try:
            return cls(**{key: value for key, value in values.items() if key in known})
        except SpecError as exc:
            raise SpecError(
                f"the job it holds cannot be finished ({exc}); delete the state file and its "
                "tile folder, then start the download again"
            ) from exc


def with_region(spec: JobSpec, outline: dict[str, Any] | None) -> JobSpec:
    """``spec`` that also keeps the region's outline for pictures (same fingerprint)."""
    if outline is None:
        return spec
    return replace(spec, extra={**spec.extra, REGION_EXTRA: outline})


def identity_differences(stored: JobSpec, wanted: JobSpec) -> list[str]:
    """What makes ``wanted`` another job than ``stored``: the fingerprint's parts that differ."""
    old, new = stored._identity(), wanted._identity()
    named = ("service", "dtype", "nodata", "output")
    differs = [
        f"{key} ({_short(old[key])} -> {_short(new[key])})" if key in named else key
        for key in old
        if old[key] != new[key]
    ]
    if old["service"] != new["service"] and GOOGLE not in (old["service"], new["service"]):
        differs.append(f"to resume, use {old['service']} again (an emulator: its --port)")
    return differs


def resumed_spec(
    stored: JobSpec, wanted: JobSpec, tiles: int, largest_side: Callable[[], int]
) -> tuple[JobSpec, list[str]]:
    """The spec a resumed job runs with, and what to tell the user about it.

    ``wanted`` is the same job as ``stored`` (same fingerprint). Its plan settings
    (max_tile_bytes, max_tile_dim, endpoint) can differ: the stored plan of ``tiles`` tiles is
    kept whatever they say. The endpoint only changes how tiles are fetched, never their
    pixels, so the user's current choice wins, except that download URLs allow at most
    EE_MAX_SIDE_URLS pixels a side: if a tile of the stored plan (``largest_side()``, asked
    only then) is larger, the stored endpoint stays.
    """
    changed = [
        f"{name} {old} -> {new}"
        for name, old, new in (
            ("endpoint", stored.endpoint, wanted.endpoint),
            ("max_tile_bytes", stored.max_tile_bytes, wanted.max_tile_bytes),
            *((key, stored.extra.get(key), wanted.extra.get(key)) for key in PLAN_EXTRA),
        )
        if old != new
    ]
    if not changed:
        return wanted, []
    endpoint = wanted.endpoint
    note = f"kept the stored plan ({tiles} tiles) although {', '.join(changed)}"
    if stored.endpoint != wanted.endpoint:
        side = largest_side() if wanted.endpoint == "urls" else 0
        if side > EE_MAX_SIDE_URLS:
            endpoint = stored.endpoint
            note += (
                f"; fetching with endpoint {endpoint} still: the plan has tiles of {side} pixels "
                f"a side, more than download URLs allow ({EE_MAX_SIDE_URLS})"
            )
        else:
            note += f"; the remaining tiles are fetched with endpoint {endpoint}"
    extra = {k: v for k, v in wanted.extra.items() if k not in PLAN_EXTRA}
    extra.update({k: v for k, v in stored.extra.items() if k in PLAN_EXTRA})
    spec = replace(wanted, endpoint=endpoint, max_tile_bytes=stored.max_tile_bytes, extra=extra)
    return spec, [note]


def nodata_value(value: Any, dtype: str) -> int | float:
    """``value`` as a value of ``dtype`` (0.0 for uint16 is 0), or SpecError if it is none.

    Earth Engine fills masked pixels with the value and then casts to ``dtype``: a value the
    type cannot hold is clamped or truncated into a valid one, and masked pixels would turn
    into data (-9999 in uint16 becomes 0). Floats take NaN but not infinities.
    """
    try:
        kind = np.dtype(dtype)
    except TypeError:
        raise SpecError(f"unknown dtype {dtype!r}") from None
    if kind.kind not in "uif":
        raise SpecError(f"dtype {dtype} is not a numeric pixel type")
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise SpecError(f"unmask_value must be a number, got {value!r}")
    what = f"unmask_value {value!r}"
    if kind.kind == "f":
        number = float(value)
        if math.isnan(number):
            return math.nan
        limit = float(np.finfo(kind).max)
        if not math.isfinite(number) or abs(number) > limit:
            raise SpecError(
                f"{what} is not a finite {dtype} (-{limit:g}..{limit:g}); choose a finite "
                "value within that range, or NaN"
            )
        return float(kind.type(number))
    info = np.iinfo(kind)
    if isinstance(value, numbers.Integral):
        whole = int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise SpecError(f"{what} cannot be stored in {dtype}; choose a whole number")
        if not number.is_integer():
            raise SpecError(
                f"{what} is not a whole number, so {dtype} cannot hold it; choose a whole "
                "number, or a float dtype"
            )
        whole = int(number)
    if not info.min <= whole <= info.max:
        raise SpecError(
            f"{what} does not fit {dtype} ({info.min}..{info.max}): Earth Engine would clamp "
            f"it and masked pixels would become valid data; choose a value within "
            f"{info.min}..{info.max}, or a dtype that holds it"
        )
    return whole


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _grid_dict(grid: Grid) -> dict[str, Any]:
    return {
        "crs": grid.crs,
        "transform": list(grid.transform),
        "width": grid.width,
        "height": grid.height,
    }


def default_nodata(dtype: str) -> float | int:
    """The value masked pixels take unless the user chooses one: the type's maximum for
    unsigned types, its lowest value otherwise.

    Not 0 for unsigned types: 0 is valid data in most of them (dark water in reflectance,
    class 0, a count), and a nodata of 0 turns those pixels into holes (geemap PR #1977).
    The maximum is the value least often valid: a saturated sample, if anything.
    """
    kind = np.dtype(dtype)
    if kind.kind == "u":
        return int(np.iinfo(kind).max)
    if kind.kind == "i":
        return int(np.iinfo(kind).min)
    return float(np.finfo(kind).min)
