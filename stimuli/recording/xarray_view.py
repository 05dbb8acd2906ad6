"""A lazy xarray view of a recording: dims `time`, `y`, `x`, `cell`, `repeat`.

h5netcdf opens the spec's plain HDF5 datasets with positional ("phony") dimension names; they
are renamed here. Data stays on disk until indexed, like the `Recording` it comes from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from stimuli.recording.reader import Recording


def _open_group(path: str, group: str, name: str, dims: tuple[str, ...]) -> xr.DataArray:
    ds = xr.open_dataset(path, engine="h5netcdf", group=group, phony_dims="access")
    da = ds[name]
    return da.rename(dict(zip(da.dims, dims, strict=True)))


def open_xarray(rec: Recording) -> xr.Dataset:
    """`frames (time, y, x)` uint8 and, for recordings, `spike_counts (repeat, time, cell)`.

    Coordinates: `time` in seconds from the first frame, `frame` (index), `segment` (name of the
    segment each frame belongs to, "" outside any), `cell` (ids), `cell_type` where known.
    """
    n_frames = rec.n_frames
    frame_index = np.arange(n_frames)
    segment_of = np.full(n_frames, "", dtype=object)
    for seg in rec.segments:
        segment_of[seg.start:seg.stop] = seg.name
    coords: dict[str, object] = {
        "time": frame_index / rec.frame_rate,
        "frame": ("time", frame_index),
        "segment": ("time", segment_of.astype(str)),
    }
    data_vars: dict[str, xr.DataArray] = {
        "frames": _open_group(rec.path, "stimulus", "frames", ("time", "y", "x")),
    }
    if rec.has_responses:
        coords["cell"] = rec.cell_ids
        coords["repeat"] = np.arange(rec.n_repeats)
        if rec.cell_types is not None:
            coords["cell_type"] = ("cell", np.array(rec.cell_types, dtype=str))
        data_vars["spike_counts"] = _open_group(
            rec.path, "responses", "spike_counts", ("repeat", "time", "cell")
        )
    attrs = {k: v for k, v in rec.attrs.items() if isinstance(v, str | int | float)}
    attrs["segments"] = [f"{s.name}:[{s.start},{s.stop})" for s in rec.segments]
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
