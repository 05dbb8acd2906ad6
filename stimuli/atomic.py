"""Files that appear whole or not at all: write beside the target, fsync, rename, fsync the folder.

Recording-v1 files have their own writer (`stimuli.recording.RecordingWriter`, which validates
before the rename); everything else the rig side writes whole (NWB exports) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The caller writes and closes the file at the yielded path inside the `with` block. The data
    and the rename are flushed to disk so that a power cut leaves the old file or the new one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The suffix stays last: some writers (pynwb) judge a file by its extension.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # Writers such as h5py refuse to create over an existing file only in exclusive mode; an
    # empty placeholder would still confuse some, so the name is handed over free.
    tmp.unlink()
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's private mode is not what a shared file wants
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any writer threads.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()
