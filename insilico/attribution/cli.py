"""`insilico attribute`: the command function (registered by `insilico.cli`)."""

from __future__ import annotations

from pathlib import Path

import typer

from insilico import checks
from insilico.console import console, progress
from insilico.errors import friendly_errors
from stimuli.errors import InputError


def attribute_command(
    model: Path = typer.Option(..., "--model", help="Run folder or model.pt of the twin, or a shared core's folder."),
    data: Path = typer.Option(..., "--data", help="Recording-v1 file with the test movie."),
    cell: str = typer.Option(None, "--cell", help="One cell id (A:42 on a shared core's folder)."),
    cells: str = typer.Option(None, "--cells", help="'all' or comma-separated ids (3,42; A:3,A:42 on a shared core)."),
    out: Path = typer.Option(Path("reports"), "--out", help="Folder for cell<ID>.h5/.html (and index.html)."),
    clips: int = typer.Option(6, "--clips", help="Clips per cell: top-firing clips plus 2 random ones."),
    method: str = typer.Option("ig", "--method", help="ig, saliency or occlusion."),
    noise_tunnel: bool = typer.Option(False, "--noise-tunnel/--no-noise-tunnel", help="Smooth with NoiseTunnel."),
    ig_steps: int = typer.Option(None, "--ig-steps", help="Integrated-gradients steps (default 8; the "
                                 "reports give the completeness gap they leave)."),
    test: str = typer.Option("mov2", "--test", help="Test segment to take clips from."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Per-cell attribution reports (Captum): where and when each cell's twin responds."""
    with friendly_errors():
        from insilico.attribution.config import METHODS, AttributionConfig, random_share
        from insilico.attribution.pipeline import attribute_cells

        if (cell is None) == (cells is None):
            raise InputError("give exactly one of --cell ID or --cells all|3,42")
        selection = cell if cell is not None else cells
        if cell is not None and ("," in cell or cell.strip().lower().endswith("all")):
            raise InputError(f"--cell names one cell (42, or A:42 on a shared core), got {cell!r}; use --cells")
        # Arguments first: loading the twin and its test movie takes seconds.
        checks.cell_list(selection, "--cell" if cell is not None else "--cells")
        checks.one_of(method, METHODS, "--method")
        checks.at_least(clips, 1, "--clips")
        checks.at_least(ig_steps, 1, "--ig-steps")
        if not model.exists():
            raise FileNotFoundError(f"--model {model}: no such run folder or model.pt")
        from insilico.cells import on_recording

        (model,), selection = on_recording([model], selection, "--cell" if cell is not None else "--cells")
        checks.input_file(data, "--data", "recording")
        checks.output_folder(out, "--out")
        steps = {} if ig_steps is None else {"ig_steps": ig_steps}
        config = AttributionConfig(method=method, n_clips=clips, n_random=random_share(clips),
                                   noise_tunnel=noise_tunnel, **steps)
        from vist_model.twin import Twin

        meta = Twin.load(model, device="cpu").metadata  # cheap: for the banner only
        console.print(f"backbone: {meta.describe_backbone()}")
        kernel = getattr(meta.network_config, "spatial_kernel", 1)  # baselines: per pixel
        if kernel > 1:
            # Measured: median |r| with the true filters 0.59 with 3 x 3 kernels, 0.83 with 1 x 1.
            console.print(f"note: this twin's layers mix neighbouring positions (spatial kernel {kernel}), "
                          "so its maps spread as far as it does; "
                          "a twin trained with --spatial-kernel 1 gives maps at the receptive field's scale")
        with progress() as bar:
            results = attribute_cells(model, data, selection, out, config=config, device=device,
                                      test_segment=test, progress=bar)
        for r in results[:10]:
            console.print(f"cell {r.cell_id}: CC {r.cc:.2f}, map-RF r {r.rf_correlation:.2f}, "
                          f"completeness gap {r.completeness_gap:.3g}, sanity rho {r.sanity_similarity:.2f}")
            for note in r.trust_notes():
                console.print(f"  [yellow]warning[/]: {note}")
        untrusted = [r.cell_id for r in results if r.trust_notes()]
        if untrusted:
            console.print(f"[yellow]{len(untrusted)} of {len(results)} maps come with a warning[/] "
                          "(see each report): the twin does not predict those cells well")
        if len(results) > 10:
            console.print(f"... and {len(results) - 10} more")
        pages = [out / f"cell{r.cell_id}.html" for r in results]
        console.print(f"wrote [bold]{pages[0] if len(pages) == 1 else out / 'index.html'}[/] "
                      f"and {len(results)} cell report(s) in {out}")
