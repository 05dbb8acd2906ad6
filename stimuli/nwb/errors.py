"""The error an NWB import or export raises for a file it cannot take as it is."""

from __future__ import annotations

from stimuli.errors import InputError


class NwbError(InputError):
    """An NWB file (or a recording to export) that cannot be converted as it stands.

    `where` names the NWB object at fault (`/units`, `stimulus/presentation/mov1`) or the
    recording-v1 dataset, so that a lab can fix the pipeline that wrote the file.
    """

    def __init__(self, path: str, where: str, problem: str) -> None:
        self.path = path
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}")
