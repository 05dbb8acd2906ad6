"""`insilico optimize` and `insilico verify`: thin Typer commands over `insilico.design.run`.

Registered by `insilico/cli.py` as `app.command("optimize")(optimize_command)` and
`app.command("verify")(verify_command)`. Heavy imports (torch, optuna) happen inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import typer

from insilico.console import console
from insilico.design.settings import DesignSettings, default
from insilico.errors import friendly_errors
from stimuli.errors import InsilicoError

# Each design setting the command takes: its parameter and flag (the library's errors name the setting).
FLAGS = {"method": ("method", "--method"), "n_frames": ("frames", "--frames"), "objective": ("objective", "--objective"),
         "rms_contrast": ("rms_contrast", "--rms-contrast"), "seeds": ("seeds", "--seeds"),
         "storage": ("storage", "--storage"), "steps": ("steps", "--steps"), "trials": ("trials", "--trials"),
         "window_frames": ("window", "--window"), "rf_envelope": ("rf_envelope", "--rf-envelope"),
         "start": ("start_from", "--start-from"), "frame_rms": ("frame_rms", "--frame-rms"),
         "envelope_source": ("envelope_source", "--envelope-source")}


def optimize_command(
    model: list[Path] = typer.Option(..., "--model", help="Run folder or model.pt; repeat for an ensemble."),
    cells: str = typer.Option(None, "--cells", "--cell",
                              help="Cell id(s): 42, 3,42,77 or all; A:42 on a shared core's folder."),
    out: Path = typer.Option(Path("designs"), "--out", help="Folder for cell<ID>.h5/.json/.png/.gif."),
    method: str = typer.Option(default("method"), "--method", help="gradient, optuna or both."),
    frames: int = typer.Option(default("n_frames"), "--frames", help="Clip length in frames."),
    objective: str = typer.Option(default("objective"), "--objective",
                                  help="increase, decrease or discriminative."),
    rms_contrast: float = typer.Option(None, "--rms-contrast",
                                       help="RMS contrast budget (default: the training movies')."),
    seeds: int = typer.Option(default("seeds"), "--seeds", help="Gradient designs per cell, one per seed, in one batch."),
    storage: str = typer.Option(None, "--storage",
                                help="Optuna storage URL: journal file (default OUT/optuna.journal), sqlite:///, postgresql://."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    steps: int = typer.Option(default("steps"), "--steps", help="Gradient steps."),
    trials: int = typer.Option(default("trials"), "--trials",
                               help="Optuna TPE trials per cell (plus half as many CMA-ES)."),
    window: int = typer.Option(default("window_frames"), "--window", help="Response window: the clip's last N frames."),
    rf_envelope: float = typer.Option(default("rf_envelope"), "--rf-envelope",
                                      help="Confine gradient designs to this many RF-centre sigmas around the "
                                           "recorded receptive field; 0: the whole screen (also used where the "
                                           "recorded map is noise, as for some ON-OFF cells)."),
    start: Path = typer.Option(None, "--start",
                               help="Refine this clip (e.g. an earlier design of the one --cell) instead of "
                                    "--start-from."),
    start_from: str = typer.Option(default("start"), "--start-from",
                                   help="Where gradient designs start: sta (each cell's denoised white-noise "
                                        "STA), attribution (the twin's attribution map over the cell's best "
                                        "natural clips), natural (the best natural clip, accentuated), grey, or "
                                        "auto: each of these the recording allows, keeping the one the twin rates "
                                        "highest (recorded in the JSON)."),
    frame_rms: str = typer.Option(default("frame_rms"), "--frame-rms",
                                  help="Ceiling on every frame's RMS contrast besides the whole-clip budget: a "
                                       "value, or training (the training movies' per-frame RMS)."),
    envelope_source: str = typer.Option(default("envelope_source"), "--envelope-source",
                                        help="Where the envelope and the parametric search go: rf (the recorded "
                                             "RF), attribution (the twin's attribution map) or auto (the RF where "
                                             "it locates the cell)."),
) -> None:
    """Design the stimulus that drives a cell hardest (or silences it, or singles it out)."""
    with friendly_errors():
        from insilico.cells import describe_cell_accuracy, on_recording, parse_cells
        from insilico.console import progress
        from insilico.design.run import load_twins, optimize_cells

        if cells is None:
            raise InsilicoError("name the cells with --cell 42, --cells 3,42,77 or --cells all")
        settings = command_settings(dict(method=method, frames=frames, objective=objective, rms_contrast=rms_contrast,
                                         seeds=seeds, storage=storage, steps=steps, trials=trials, window=window,
                                         rf_envelope=rf_envelope, start_from=start_from, frame_rms=frame_rms,
                                         envelope_source=envelope_source))
        _check_design_arguments(model, cells, out, start)
        model, cells = on_recording(model, cells)
        twins = load_twins(model, device)
        ids = parse_cells(cells, twins[0].metadata.cell_ids)  # the ids, once the twin says which it has
        starts = {}
        if start is not None:
            if len(ids) != 1:
                raise InsilicoError(f"--start refines one cell's design: name one --cell, not {len(ids)}")
            if method == "optuna":
                raise InsilicoError("--start refines a gradient design: use --method gradient or both")
            if not start.is_file():
                raise FileNotFoundError(f"--start: {start} not found")
            starts = {ids[0]: start}
        console.print(f"backbone: {twins[0].metadata.describe_backbone()}"
                      + (f" (ensemble of {len(twins)} twins)" if len(twins) > 1 else ""))
        with progress() as bar:
            results = optimize_cells(twins, cells, out, settings, progress=bar, starts=starts)
        for r in results:
            if r.envelope and r.envelope["width_rf_sigmas"] and not r.envelope["used"]:
                console.print(f"[yellow]note[/]: cell {r.cell_id}: RF envelope {r.envelope['note']}; the design "
                              "used the whole screen")
            p = r.predicted
            console.print(
                f"cell {r.cell_id}: design ({r.method}) {p['design']:.3f}, best natural clip {p['natural']:.3f}, "
                f"best parametric {p['parametric']:.3f} spikes/bin over frames {r.window[0]}..{r.window[1] - 1} "
                f"at RMS {r.budget.rms:.3f}; {r.seconds:.1f} s -> [bold]{r.paths['design']}[/]"
            )
            console.print(f"  {describe_cell_accuracy(twins[0].metadata, r.cell_id)}")
        behind = [str(r.cell_id) for r in results if r.predicted["design"] < r.predicted["natural"]]
        if behind and objective == "increase":
            # The natural clip is the twin's pick from thousands of windows, scored by the same
            # twin, so its predicted rate is the twin's most flattering one; the design is not.
            console.print(f"[yellow]note[/]: for cell{'s' if len(behind) > 1 else ''} {', '.join(behind)} the twin "
                          "predicts its best natural clip above the design. Both numbers are the twin's, and the "
                          "clip was picked as the twin's highest among every window of the training movies; the "
                          "retina can rank them the other way: measure both (`insilico verify` on simulated data, "
                          "`insilico rig present` on a rig)")


def command_settings(params: Mapping[str, object]) -> DesignSettings:
    """The design settings of `insilico optimize` from its parameters' values (`FLAGS`).

    A bad value is an error naming the flag, before the twins load (seconds to tens of seconds).
    """
    import re

    from insilico.design.settings import DesignSettingError, design_settings

    values = {setting: params[param] for setting, (param, _) in FLAGS.items()}
    if isinstance(values["frame_rms"], str) and values["frame_rms"] != "training":
        try:
            values["frame_rms"] = float(values["frame_rms"])
        except ValueError:
            raise InsilicoError(f"--frame-rms must be a number or training, got {values['frame_rms']!r}") from None
    try:
        return design_settings(**values)
    except DesignSettingError as err:
        if err.setting not in FLAGS:
            raise
        # The problem may name another setting ("longer than the clip (n_frames 8)"): its flag too.
        problem = re.sub(r"\b\w+\b", lambda m: FLAGS[m[0]][1] if m[0] in FLAGS else m[0], err.problem)
        raise InsilicoError(f"{FLAGS[err.setting][1]} {problem}") from None


def _check_design_arguments(models: list[Path], cells: str, out: Path, start: Path | None) -> None:
    """The arguments of `optimize` that are not design settings, before the twins load."""
    from insilico import checks

    checks.cell_list(cells)
    for path in models:
        if not path.exists():
            raise FileNotFoundError(f"--model {path}: no such run folder or model.pt")
    if start is not None:
        checks.input_file(start, "--start")
    checks.output_folder(out, "--out")


def verify_command(
    design: Path = typer.Option(..., "--design", help="A design file written by `insilico optimize`."),
    sim: int = typer.Option(None, "--sim", help="Seed of the simulated retina."),
    data: Path = typer.Option(None, "--data", help="The simulated recording the twin was trained on."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Play a design to the simulated retina and report the true response."""
    with friendly_errors():
        import json

        from insilico.design.verify import verify_design

        if (sim is None) == (data is None):
            raise InsilicoError("name the simulated retina with exactly one of --sim SEED or --data RECORDING")
        v = verify_design(design, sim_seed=sim, data=data)
        if as_json:
            typer.echo(json.dumps(v.to_json_dict(), indent=2))
            return
        if v.retina_note:
            console.print(f"[yellow]warning[/]: {v.retina_note}")
        console.print(f"cell {v.cell_id} ({v.cell_type}), true mean rate over frames {v.window[0]}..{v.window[1] - 1} "
                      f"at RMS {v.rms_contrast:.3f}, in expected spikes per bin:")
        console.print(f"  design          {v.design:.4f}")
        if v.natural is not None:
            console.print(f"  natural clip    {v.natural:.4f}   design / natural = {_ratio(v.vs_natural, v.natural)}")
        if v.parametric is not None:
            console.print(f"  parametric      {v.parametric:.4f}")
        if v.optimum is not None:
            console.print(f"  true optimum    {v.optimum:.4f}   design / optimum = "
                          f"{_ratio(v.fraction_of_optimum, v.optimum)}")
        else:
            console.print("  true optimum    (not defined: the cell is not linear)")
        small = [name for name, rate in (("design", v.design), ("natural clip", v.natural)) if v.too_small(rate)]
        if small:
            from insilico.design.verify import MIN_COMPARABLE_RATE

            console.print(f"[yellow]note[/]: {' and '.join(small)} drive{'s' if len(small) == 1 else ''} the cell "
                          f"under {MIN_COMPARABLE_RATE:g} spikes/bin: too little to compare "
                          + ("(neither drives it)" if len(small) == 2 else "by ratio"))


def _ratio(value: float | None, denominator: float | None = None) -> str:
    if value is None:
        return "n/a (denominator too small)" if denominator is not None else "n/a"
    # Two significant digits below 0.1, so a design at 0.3 % of the optimum does not read as 0.00.
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"
