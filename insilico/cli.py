"""The `insilico` command line: each command is one call into a library function.

Heavy modules (torch, transformers, psychopy) are imported inside the commands that need them,
so `insilico inspect` and `insilico rig ...` start fast and run on a rig PC without torch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from insilico import checks
from insilico.attribution.cli import attribute_command
from insilico.console import console, err_console, progress
from insilico.design.cli import optimize_command, verify_command
from insilico.errors import friendly_errors
from insilico.import_video import import_video_command
from insilico.loop.cli import demo_command, run_command
from insilico.nwb_cli import export_app, import_app
from rig_bridge.cli import rig_app
from stimuli.errors import InsilicoError

if TYPE_CHECKING:
    from stimuli.presentation.rig_profile import RigProfile
    from vist_model.multi import SharedCoreRun

app = typer.Typer(
    name="insilico",
    help="A digital twin of the retina: simulate, train, design, present, record, close the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: typer's rich panels label every flag `<bool>`, as if it took a value.
    rich_markup_mode=None,
)
app.add_typer(rig_app, name="rig", help="The rig bridge: serve a rig, make keys, present stimuli.")
# One `import` group: NWB (`insilico.nwb_cli`) and video files.
import_app.command("video")(import_video_command)


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
        checks.output_file(out, "--out")
        # The flags a user typed; SimulationConfig checks the same values under their setting names.
        checks.at_least(cells, 1, "--cells")
        checks.at_least(size, 16, "--size")
        checks.at_least(test_repeats, 2, "--test-repeats")
        from rig_bridge.retina.recording import SimulationConfig, simulate_recording

        config = SimulationConfig(
            n_cells=cells, seed=seed, size=size, frame_rate=fps, train_seconds=train_seconds,
            test_seconds=test_seconds, test_repeats=test_repeats, noise_seconds=noise_seconds,
        )
        with progress() as bar:
            path = simulate_recording(out, config, progress=bar)
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
    data: list[Path] = typer.Option(..., "--data", help="Recording-v1 file to train on; repeat it to train one core "
                                    "on several recordings (a readout per recording, OUT/<file name>/model.pt each)."),
    train_segments: str = typer.Option(None, "--train", help="Training segments, comma-separated "
                                      "(default: mov1 and the white-noise segment, where the file has one)."),
    model: str = typer.Option("vist", "--model", help="vist, ln or cnn."),
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt, train.json, loss_curve.png."),
    backbone: str = typer.Option(None, help="Backbone: pixels (the default without pretrained weights), tiny (a "
                                 "random DINOv2), dinov2-small/base/large/giant, or a local folder."),
    preset: str = typer.Option("cpu", help="Vi-ST preset: vist (published) or cpu."),
    rf_conditioning: str = typer.Option("sum", help="AdaLN conditioning: sum (published) or per_cell."),
    readout: str = typer.Option(None, help="Vi-ST readout: dense (published), factorized (a spatial mask "
                                "per cell, starting at its RF) or dog (factorized, each mask a difference of "
                                "Gaussians). Default: the preset's."),
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
                               "(default: 16 for the cpu preset, 60 for vist)."),
    batch_size: int = typer.Option(None, help="Windows per batch (default: 4 for cpu, 16 for vist)."),
    swa: bool = typer.Option(False, help="Stochastic weight averaging over the last quarter."),
    seed: int = typer.Option(0, help="Seed of the initial weights and of the training windows."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    noise_segment: str = typer.Option(None, help="White-noise segment for STA RFs when the file has no /cells/rf."),
    core: Path = typer.Option(None, "--core", help="Fit the new recording onto this trained core (a run folder of "
                              "`train --data A --data B`, or a Vi-ST twin): only its readout is trained, the core frozen."),
    finetune_core: bool = typer.Option(False, "--finetune-core", help="With --core: then train the whole network a "
                                       "few epochs at a small learning rate."),
) -> None:
    """Train a twin (Vi-ST or a baseline) on a recording; resumes an interrupted run.

    Several --data train one shared core; --core fits a new recording onto a trained core.
    """
    with friendly_errors():
        # Every argument is checked before the recording is read or a backbone loaded.
        for path in data:
            checks.input_file(path, "--data", "recording")
        if finetune_core and core is None:
            raise InsilicoError("--finetune-core fine-tunes a core given with --core")
        if core is not None or len(data) > 1:
            given = [f for f, v in (("--readout", readout), ("--cmst-padding", cmst_padding), ("--output", output),
                                    ("--spatial-kernel", spatial_kernel), ("--loss", loss)) if v is not None]
            if model != "vist":
                raise InsilicoError(f"--model {model}: a shared core is a Vi-ST core (--model vist)")
            if core is not None and given:
                raise InsilicoError(f"{', '.join(given)}: a twin fitted onto --core {core} takes its architecture "
                                    "and loss from the core")
        if core is not None:
            if len(data) > 1:
                raise InsilicoError("--core fits one new recording: give one --data")
            if not core.exists():
                raise FileNotFoundError(f"--core {core}: no such run folder or twin")
        named_segments = _names(train_segments, "--train") if train_segments is not None else None
        checks.one_of(model, ("vist", "ln", "cnn"), "--model")
        checks.one_of(preset, ("cpu", "vist"), "--preset")
        checks.one_of(rf_conditioning, ("sum", "per_cell"), "--rf-conditioning")
        checks.one_of(readout, ("dense", "factorized", "dog"), "--readout")
        checks.one_of(cmst_padding, ("valid", "same"), "--cmst-padding")
        checks.one_of(output, ("softplus", "linear"), "--output")
        checks.one_of(loss, ("poisson", "vist"), "--loss")
        if loss == "poisson" and (output == "linear" or (output is None and preset == "vist")):
            raise InsilicoError("--loss poisson needs positive rates: add --output softplus")
        checks.at_least(spatial_kernel, 1, "--spatial-kernel")
        if spatial_kernel is not None and spatial_kernel % 2 == 0:
            raise InsilicoError(f"--spatial-kernel must be odd (1, 3, 5, ...), got {spatial_kernel}")
        checks.at_least(epochs, 1, "--epochs")
        checks.at_least(batch_size, 1, "--batch-size")
        checks.output_folder(out, "--out")

        from stimuli.recording import open_recording
        from vist_model.accuracy import KNOWS_CELL_CC
        from vist_model.data import default_train_segments
        from vist_model.fit_twin import TwinSpec, train_twin
        from vist_model.train import training_for
        from vist_model.twin import interrupted_epoch

        def segments_of(path: Path) -> list[str]:
            if named_segments is not None:
                return named_segments
            with open_recording(path) as rec:
                return default_train_segments(rec)

        segments = segments_of(data[0])
        spec = TwinSpec(kind=model, preset=preset, rf_conditioning=rf_conditioning,
                        readout=readout, cmst_padding=cmst_padding, spatial_kernel=spatial_kernel,
                        output=output, loss=loss, **({"backbone": backbone} if backbone else {}))
        if core is not None:
            _fit_on_core(core, data[0], segments, out, finetune_core, epochs, batch_size, seed, device, noise_segment)
            return
        defaults = training_for(preset)
        cfg = replace(defaults, epochs=defaults.epochs if epochs is None else epochs,
                      batch_size=defaults.batch_size if batch_size is None else batch_size, swa=swa, seed=seed)
        done = interrupted_epoch(out)
        if done is not None:
            console.print(f"resuming the run in {out} interrupted after epoch {done} of {cfg.epochs} "
                          f"({out / 'train_state.pt'}); delete that file to start afresh")
        try:
            with progress() as bar:
                if len(data) > 1:
                    from vist_model.multi import train_shared_core

                    shared = train_shared_core([(p, segments_of(p)) for p in data], out, spec=spec, config=cfg,
                                               device=device, noise_segment=noise_segment, progress=bar)
                else:
                    run = train_twin(data[0], segments, out, spec=spec, config=cfg, device=device,
                                     noise_segment=noise_segment, progress=bar)
        except KeyboardInterrupt:
            done = interrupted_epoch(out)
            where = f"after epoch {done} of {cfg.epochs}" if done is not None else "before the first epoch ended"
            err_console.print(f"[yellow]interrupted[/] {where}: run the same command to "
                              + ("resume" if done is not None else "start again"))
            raise typer.Exit(code=130) from None
        if len(data) > 1:
            _report_shared_core(shared, out)
            return
        meta = run.twin.metadata
        console.print(f"backbone: {meta.describe_backbone()}")
        console.print(f"receptive fields: {run.rf_source}")
        r = run.result
        stop = (f"stopped early: no better validation loss for {cfg.patience} epochs"
                if r.stopped_early else f"of {cfg.epochs}")
        if meta.kind == "ln":  # fitted in closed form (`vist_model.ln_fit`): epochs do not apply
            console.print(f"fitted ln on {meta.n_cells} cells (ridge filter, then a Poisson-fitted output "
                          f"nonlinearity): validation loss {r.best_val_loss:.4f}, {r.seconds:.0f} s")
        else:
            console.print(f"trained {meta.kind} on {meta.n_cells} cells: {_count(r.epochs_run, 'epoch')} ({stop}), "
                          f"best validation loss {r.best_val_loss:.4f} (epoch {r.best_epoch + 1}), {r.seconds:.0f} s")
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
    png_out: Path = typer.Option(None, "--png", help="Traces figure of the best, median and worst cell "
                                 "(default: beside --json; none without either)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Per-cell CC, FEVE, noise ceiling and SD-KL of a twin on a test segment."""
    with friendly_errors():
        from stimuli.recording import open_recording

        if not model.exists():
            raise FileNotFoundError(f"--model {model}: no twin checkpoint here (train one with `insilico train`)")
        checks.input_file(data, "--data", "recording")
        png = png_out or (json_out.with_suffix(".png") if json_out else None)
        for path, flag in ((json_out, "--json"), (csv_out, "--csv"), (png, "--png")):
            if path is not None:
                checks.output_file(path, flag)
        with open_recording(data) as rec:
            names = [s.name for s in rec.segments]
            if test not in names:
                raise InsilicoError(f"--test {test}: no such segment in {data} (segments: {', '.join(names)})")
            repeats = rec.repeats_shown(test)
        if repeats < 2:
            console.print(f"[yellow]note[/]: {test} was shown once in {data}; FEVE and the noise ceiling need "
                          "at least 2 repeats, so they are n/a (CC and SD-KL are against the one trial)")

        from insilico.report_tables import print_evaluation
        from vist_model.evaluate import evaluate_twin, write_evaluation
        from vist_model.fit_twin import resolve_device
        from vist_model.twin import Twin

        twin = Twin.load(model, device=resolve_device(device))
        console.print(f"backbone: {twin.metadata.describe_backbone()}")
        result = evaluate_twin(twin, data, test, traces_png=png)
        write_evaluation(result, json_path=json_out, csv_path=csv_out)
        print_evaluation(result)
        if png is not None:
            console.print(f"traces: {png}")


@app.command()
def render(
    stim: Path = typer.Argument(..., help="Stimulus file (recording-v1, stimulus-only or full)."),
    profile: str = typer.Option("default", "--profile", help="Rig profile: a TOML file, or the name of a "
                                "shipped one (default, projector_example)."),
    out: Path = typer.Option(..., "--out", help="Where to write the captured frames and flip log."),
    headless: bool = typer.Option(True, "--headless/--no-headless", help="Render offscreen with clock-paced "
                                  "flips (on the current display, or an Xvfb started for the run)."),
    show: bool = typer.Option(False, "--show", help="Open a real window on the lab's own screen."),
    segment: str = typer.Option(None, help="Present only this segment."),
) -> None:
    """Present a stimulus through PsychoPy and capture every frame that was shown."""
    with friendly_errors():
        from contextlib import nullcontext

        checks.input_file(stim, "STIM", "stimulus file")
        checks.output_file(out, "--out")
        from stimuli.presentation import NoDisplayError, load_profile, render_file
        from stimuli.presentation.xvfb import XvfbUnavailable, virtual_display

        rig = load_profile(profile)
        offscreen = headless and not show
        try:
            with virtual_display(*_xvfb_size(rig)) if offscreen else nullcontext():
                log = render_file(stim, rig, out, headless=offscreen, show=show, segment=segment)
        except (NoDisplayError, XvfbUnavailable) as err:
            raise InsilicoError(str(err)) from None
        console.print(f"presented {len(log.flip_time)} frames at {log.frame_rate_hz:g} Hz "
                      f"({log.n_refreshes_per_frame} refreshes each); dropped: {log.n_dropped}")
        console.print(f"wrote [bold]{out}[/] (captured frames and /presentation flip log)")


def _report_shared_core(shared: SharedCoreRun, out: Path) -> None:
    r = shared.result
    console.print(f"trained a core on {len(shared.core.names)} recordings: {_count(r.epochs_run, 'epoch')}, best "
                  f"validation loss {r.best_val_loss:.4f} (epoch {r.best_epoch + 1}), {r.seconds:.0f} s")
    for name in shared.core.names:
        meta = shared.core.twin(name).metadata
        acc = meta.accuracy
        where = (f"held-out median CC {acc.median_cc():.2f} on {acc.segment}" if acc is not None and acc.n_frames
                 else "no held-out accuracy")
        console.print(f"  {name}: {meta.n_cells} cells (ids {name}:{meta.cell_ids[0]}...), {where} -> "
                      f"{out / name / 'model.pt'}")
    console.print(f"wrote [bold]{out / 'core.json'}[/]; design on one recording's cells with "
                  f"`insilico optimize --model {out / shared.core.names[0]} --cell ID`, fit a new one with --core {out}")


def _fit_on_core(core: Path, data: Path, segments: list[str], out: Path, finetune_core: bool, epochs: int | None,
                 batch_size: int | None, seed: int, device: str, noise_segment: str | None) -> None:
    """`insilico train --core`: a new recording's readout on a frozen core (then, optionally, everything)."""
    from insilico.console import progress
    from vist_model.core import CORE_FITTING, fit_on_core

    cfg = replace(CORE_FITTING, epochs=epochs or CORE_FITTING.epochs,
                  batch_size=batch_size or CORE_FITTING.batch_size, seed=seed)
    with progress() as bar:
        run = fit_on_core(core, data, segments, out, config=cfg, finetune_core=finetune_core, device=device,
                          noise_segment=noise_segment, progress=bar)
    meta, r = run.twin.metadata, run.result
    stages = "readout on the frozen core" + (", then the whole network" if finetune_core else "")
    console.print(f"receptive fields: {run.rf_source}")
    console.print(f"fitted {meta.n_cells} cells onto {core} ({stages}): {_count(r.epochs_run, 'epoch')}, best "
                  f"validation loss {r.best_val_loss:.4f}, {r.seconds:.0f} s")
    acc = meta.accuracy
    if acc is not None and acc.n_frames:
        console.print(f"held-out accuracy on {acc.segment}: median CC {acc.median_cc():.2f}; stored in the checkpoint")
    console.print(f"wrote [bold]{out / 'model.pt'}[/], {out / 'loss_curve.png'}")


def _xvfb_size(rig: RigProfile) -> tuple[int, int]:
    # The virtual screen must hold the rig's whole window (the presenter checks that it fits).
    return max(1024, rig.monitor_width_px), max(768, rig.monitor_height_px)


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InsilicoError(f"{flag}: name at least one segment")
    return names


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# Commands that live beside their library code, listed after the data and twin commands.
app.command("optimize")(optimize_command)
app.command("verify")(verify_command)
app.command("attribute")(attribute_command)
app.command("run")(run_command)
app.command("demo")(demo_command)
app.add_typer(import_app, name="import", help="Bring outside files in as recording-v1 files (nwb, video).")
app.add_typer(export_app, name="export", help="Write a recording for archives and other tools (nwb).")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
