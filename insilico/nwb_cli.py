"""`insilico import nwb` and `insilico export nwb`: thin Typer commands over `stimuli.nwb`.

Registered by `insilico/cli.py` as the `import` and `export` command groups (more formats may
join them). pynwb is imported inside, so the rest of the CLI starts without it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from insilico.console import console
from insilico.errors import friendly_errors
from stimuli.errors import InputError

import_app = typer.Typer(help="Bring a lab's recording into recording-v1.", no_args_is_help=True,
                         add_completion=False)
export_app = typer.Typer(help="Write a recording for archives and other tools.", no_args_is_help=True,
                         add_completion=False)


@import_app.command("nwb")
def import_nwb_command(
    file: Path = typer.Argument(..., help="NWB file with /units and image series in stimulus/presentation."),
    out: Path = typer.Option(..., "--out", help="Recording-v1 file to write."),
    units: str = typer.Option(None, "--units", help="Unit ids to keep, comma-separated (default: all)."),
    stimulus: list[str] = typer.Option(None, "--stimulus", help="Series of stimulus/presentation to take "
                                       "(repeatable; default: every image series)."),
    noise_segment: str = typer.Option(None, "--noise-segment", help="White-noise series for STA receptive "
                                      "fields (default: one named noise, white_noise, checkerboard)."),
) -> None:
    """Spikes of NWB units binned to the frames of its stimulus series; segments take the series' names."""
    with friendly_errors():
        from stimuli.nwb import NwbImportSettings, import_nwb

        keep = _ids(units) if units else None
        settings = NwbImportSettings(units=keep, stimuli=tuple(stimulus) if stimulus else None,
                                     noise_segment=noise_segment)
        report = import_nwb(file, out, settings)
        for line in report.lines():
            console.print(line)
        console.print(f"wrote [bold]{out}[/]")


@export_app.command("nwb")
def export_nwb_command(
    recording: Path = typer.Argument(..., help="Recording-v1 file."),
    out: Path = typer.Option(..., "--out", help="NWB file to write."),
    metadata: Path = typer.Option(None, "--metadata", help="TOML of session and subject metadata "
                                  "(subject_id, species, sex, age, ...; see docs/nwb.md)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run nwbinspector on the written file."),
) -> None:
    """Units with spike times, stimuli with their flip times, presentations and designs as NWB."""
    with friendly_errors():
        from stimuli.nwb import NwbSessionMetadata, export_nwb

        meta = NwbSessionMetadata.from_toml(metadata) if metadata else NwbSessionMetadata()
        report = export_nwb(recording, out, meta)
        for line in report.lines():
            console.print(line)
        console.print(f"wrote [bold]{out}[/]")
        if check:
            _check(out)


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(u) for u in text.split(",") if u.strip())
    except ValueError:
        raise InputError(f"--units takes unit ids separated by commas (e.g. 3,17,42), got {text!r}") from None


def _check(path: Path) -> None:
    from stimuli.nwb import critical, inspect_nwb

    try:
        import nwbinspector  # noqa: F401
    except ImportError:  # the rig computer installs pynwb only (requirements-rig.txt)
        console.print("nwbinspector is not installed: the file was not checked (pip install nwbinspector)")
        return
    findings = inspect_nwb(path)
    bad = critical(findings)
    for f in bad:
        console.print(f"[bold red]{f.importance}[/] {f.check} at {f.location}: {f.message}")
    if bad:
        raise typer.Exit(code=1)
    console.print(f"nwbinspector: no critical finding ({len(findings)} suggestions and best-practice notes)")
