"""The error every recording-v1 check raises."""

from __future__ import annotations

from stimuli.errors import InputError


class RecordingFormatError(InputError):
    """A file breaks `docs/recording-format.md` (recording-v1).

    `where` names the offending dataset or attribute (`/stimulus/frames`, `@frame_rate`), so a
    lab can fix the writer that produced the file.
    """

    def __init__(self, path: str, where: str, problem: str) -> None:
        self.path = path
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}")
