"""The `insilico` command line: each command is one call into a library function.

Heavy modules (torch, transformers, psychopy) are imported inside the commands that need them,
so `insilico inspect` and `insilico rig ...` start fast and run on a rig PC without torch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from insilico.attribution.cli import attribute_command
from insilico.console import console
from insilico.design.cli import optimize_command, verify_command
from insilico.errors import friendly_errors
from insilico.loop.cli import demo_command, run_command
from insilico.nwb_cli import export_app, import_app
from rig_bridge.cli import rig_app

app = typer.Typer(
    name="insilico",
    help="A digital twin of the retina: simulate, train, design, present, record, close the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(rig_app, name="rig", help="The rig bridge: serve a rig, make keys, present stimuli.")


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Recording file to write (recording-v1 HDF5)."),
    cells: int = typer.Option(90, help="Number of simulated ganglion cells."),
    seed: int = typer.Option(0, help="Seed of the retina and of every stimulus."),
    size: int = typer.Option(64, help="Screen size in pixels (square)."),
    fps: float = typer.Option(30.0, help="Frame rate in Hz."),
    train_seconds: float = typer.Option(120.0, help="Length of the training movie mov1."),
    test_seconds: float = typer.Option(30.0, help="Length of the test movie mov2."),
    test_repeats: int = typer.Option(5, help="Repeats of mov2 (noise ceiling needs >= 2)."),
    noise_seconds: float = typer.Option(120.0, help="Length of the white-noise segment (RF estimates)."),
) -> None:
    """Simulate a retina recording: mov1 (train), mov2 (test, repeated), white noise, STA RFs."""
    with friendly_errors():
        from insilico.simulate import SimulationConfig, simulate_recording

        config = SimulationConfig(
            n_cells=cells, seed=seed, size=size, frame_rate=fps, train_seconds=train_seconds,
            test_seconds=test_seconds, test_repeats=test_repeats, noise_seconds=noise_seconds,
        )
        path = simulate_recording(out, config)
        console.print(f"wrote [bold]{path}[/] ({cells} cells, seed {seed}, {size}x{size} px, {fps:g} Hz)")


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A recording-v1 file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    deep: bool = typer.Option(False, "--deep", help="Also read every chunk and check every value (slow)."),
) -> None:
    """Frames, size, frame rate, cells, segments with repeats, mean rates, reliability."""
    with friendly_errors():
        from insilico.inspect_view import print_summary
        from stimuli.recording import open_recording
        from stimuli.recording.summary import summarize

        with open_recording(file) as rec:
            if deep:
                rec.verify()
            summary = summarize(rec)
        if as_json:
            typer.echo(json.dumps(summary.to_json_dict(), indent=2))
        else:
            print_summary(summary, verified=deep)


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Recording-v1 file to train on."),
    train_segments: str = typer.Option("mov1", "--train", help="Training segments, comma-separated."),
    model: str = typer.Option("vist", "--model", help="vist, ln or cnn."),
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt, train.json, loss_curve.png."),
    backbone: str = typer.Option("tiny", help="Backbone: tiny, pixels, dinov2-small/base/large/giant, or a local folder."),
    preset: str = typer.Option("cpu", help="Vi-ST preset: vist (published) or cpu."),
    rf_conditioning: str = typer.Option("sum", help="AdaLN conditioning: sum (published) or per_cell."),
    readout: str = typer.Option(None, help="Vi-ST readout: dense (published) or factorized (a spatial mask "
                                "per cell, starting at its RF). Default: the preset's."),
    cmst_padding: str = typer.Option(None, help="valid (published: the readout sees the middle of the screen) "
                                     "or same (the readout grid covers the whole screen). Default: the preset's."),
    spatial_kernel: int = typer.Option(None, help="Spatial side of the TCN and CMST convolutions: 3 (published) "
                                       "or 1 (each grid position sees only its own patch). Default: the preset's."),
    output: str = typer.Option(None, help="Vi-ST output: softplus (positive, expansive rates) or linear "
                               "(published). Default: the preset's."),
    loss: str = typer.Option(None, help="Training loss: poisson or vist (the paper's RMSE + negative-rate "
                             "penalty + Soft-DTW; needs --output linear). Default: poisson for positive "
                             "outputs, vist for a linear one."),
    epochs: int = typer.Option(None, help="Maximum epochs, early stopping on validation "
                               "(default: 8 for the cpu preset, 60 for vist)."),
    batch_size: int = typer.Option(None, help="Windows per batch (default: 4 for cpu, 16 for vist)."),
    swa: bool = typer.Option(False, help="Stochastic weight averaging over the last quarter."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    noise_segment: str = typer.Option(None, help="White-noise segment for STA RFs when the file has no /cells/rf."),
) -> None:
    """Train a twin (Vi-ST or a baseline) on a recording; resumes an interrupted run."""
    with friendly_errors():
        from insilico.console import progress
        from vist_model.accuracy import KNOWS_CELL_CC
        from vist_model.fit_twin import TwinSpec, train_twin
        from vist_model.train import training_for

        spec = TwinSpec(kind=model, preset=preset, backbone=backbone, rf_conditioning=rf_conditioning,
                        readout=readout, cmst_padding=cmst_padding, spatial_kernel=spatial_kernel,
                        output=output, loss=loss)
        defaults = training_for(preset)
        cfg = replace(defaults, epochs=epochs or defaults.epochs, batch_size=batch_size or defaults.batch_size,
                      swa=swa, seed=seed)
        with progress() as bar:
            run = train_twin(data, _names(train_segments), out, spec=spec, config=cfg, device=device,
                             noise_segment=noise_segment, progress=bar)
        meta = run.twin.metadata
        console.print(f"backbone: {meta.describe_backbone()}")
        console.print(f"receptive fields: {run.rf_source}")
        r = run.result
        console.print(f"trained {meta.kind} on {meta.n_cells} cells: {r.epochs_run} epochs, best validation "
                      f"loss {r.best_val_loss:.4f} (epoch {r.best_epoch + 1}), {r.seconds:.0f} s")
        acc = meta.accuracy
        if acc is not None and acc.n_frames:
            known = sum(c.known for c in acc.cells)
            console.print(f"held-out accuracy on {acc.segment}: median CC {acc.median_cc():.2f}; the twin knows "
                          f"{known} of {len(acc.cells)} cells (CC >= {KNOWS_CELL_CC}); stored in the checkpoint")
        console.print(f"wrote [bold]{out / 'model.pt'}[/], {out / 'loss_curve.png'}")


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", help="Run folder or model.pt."),
    data: Path = typer.Option(..., "--data", help="Recording-v1 file."),
    test: str = typer.Option("mov2", "--test", help="Test segment (repeated for a noise ceiling)."),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    csv_out: Path = typer.Option(None, "--csv", help="Write per-cell metrics as CSV here."),
    png_out: Path = typer.Option(None, "--png", help="Traces figure (default: beside the JSON or model)."),
    device: str = typer.Option("auto"),
) -> None:
    """Per-cell CC, FEVE, noise ceiling and SD-KL of a twin on a test segment."""
    with friendly_errors():
        from insilico.report_tables import print_evaluation
        from vist_model.evaluate import evaluate_twin, write_evaluation
        from vist_model.fit_twin import resolve_device
        from vist_model.twin import Twin

        twin = Twin.load(model, device=resolve_device(device))
        console.print(f"backbone: {twin.metadata.describe_backbone()}")
        png = png_out or (json_out.with_suffix(".png") if json_out else _run_dir(model) / f"traces_{test}.png")
        result = evaluate_twin(twin, data, test, traces_png=png)
        write_evaluation(result, json_path=json_out, csv_path=csv_out)
        print_evaluation(result)
        console.print(f"traces: {png}")


@app.command()
def render(
    stim: Path = typer.Argument(..., help="Stimulus file (recording-v1, stimulus-only or full)."),
    profile: Path = typer.Option(Path("rigs/default.toml"), "--profile", help="Rig profile (TOML)."),
    out: Path = typer.Option(..., "--out", help="Where to write the captured frames and flip log."),
    headless: bool = typer.Option(True, "--headless/--no-headless", help="Render offscreen (Xvfb) and pace flips."),
    show: bool = typer.Option(False, "--show", help="Open a real window on the lab's own screen."),
    segment: str = typer.Option(None, help="Present only this segment."),
) -> None:
    """Present a stimulus through PsychoPy and capture every frame that was shown."""
    with friendly_errors():
        from stimuli.presentation import render_file

        log = render_file(stim, profile, out, headless=headless and not show, show=show, segment=segment)
        console.print(f"presented {len(log.flip_time)} frames at {log.frame_rate_hz:g} Hz "
                      f"({log.n_refreshes_per_frame} refreshes each); dropped: {log.n_dropped}")
        console.print(f"wrote [bold]{out}[/] (captured frames and /presentation flip log)")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("name at least one segment")
    return names


def _run_dir(model: Path) -> Path:
    return model if model.is_dir() else model.parent


# Commands that live beside their library code, listed after the data and twin commands.
app.command("optimize")(optimize_command)
app.command("verify")(verify_command)
app.command("attribute")(attribute_command)
app.command("run")(run_command)
app.command("demo")(demo_command)
app.add_typer(import_app, name="import", help="Bring a lab's recording into recording-v1 (nwb).")
app.add_typer(export_app, name="export", help="Write a recording for archives and other tools (nwb).")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
