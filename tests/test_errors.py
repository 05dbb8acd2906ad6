"""A user's error is one line; a bug (a KeyError or ValueError from inside) keeps its traceback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import typer

from insilico.errors import friendly_errors
from stimuli.errors import InputError, InsilicoError, NotFoundError
from stimuli.recording.errors import RecordingFormatError
from vist_model.backbone import BackboneUnavailableError


def _one_line(capsys: pytest.CaptureFixture[str], err: BaseException) -> str:
    with pytest.raises(typer.Exit) as exit_info, friendly_errors():
        raise err
    assert exit_info.value.exit_code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("bug", [
    lambda: {}["files"],                          # a record read by a key it does not hold
    lambda: int("three"),                         # a ValueError from Python, not from the toolkit
    lambda: __import__("insilico.no_such_module"),  # an import of the toolkit's own that is wrong
])
def test_a_programming_error_keeps_its_traceback(bug: Callable[[], object]) -> None:
    with pytest.raises((KeyError, ValueError, ImportError)), friendly_errors():
        bug()


@pytest.mark.parametrize("err", [
    InputError("n_frames must be >= 1, got 0"),
    RecordingFormatError("rec.h5", "/stimulus/frames", "must be uint8"),
    BackboneUnavailableError("backbone 'dinov2-small' is not on this machine"),
    FileNotFoundError("--model run: no such run folder or model.pt"),
])
def test_a_users_error_is_one_line(capsys: pytest.CaptureFixture[str], err: Exception) -> None:
    assert _one_line(capsys, err) == f"error: {err}"


def test_an_unknown_name_reads_as_a_sentence_not_a_quoted_key(capsys: pytest.CaptureFixture[str]) -> None:
    err = NotFoundError("rec.h5: no cell with id 7")
    assert isinstance(err, KeyError) and isinstance(err, InsilicoError)  # `except KeyError` still catches it
    assert _one_line(capsys, err) == "error: rec.h5: no cell with id 7"


def test_a_missing_optional_package_is_a_users_error(capsys: pytest.CaptureFixture[str]) -> None:
    # What `import torch` raises on the rig computer.
    line = _one_line(capsys, ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert line.startswith("error: torch is not installed on this machine")


def test_the_toolkits_errors_share_one_base() -> None:
    from insilico.loop.protocol import ProtocolError
    from rig_bridge.errors import RigTimeoutError
    from stimuli.nwb.errors import NwbError
    from stimuli.presentation.rig_profile import RigProfileError
    from vist_model.twin import CheckpointError

    for kind in (ProtocolError, RigTimeoutError, NwbError, RigProfileError, CheckpointError,
                 RecordingFormatError, BackboneUnavailableError):
        assert issubclass(kind, InsilicoError), kind
