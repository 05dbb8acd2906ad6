"""`insilico run` and `insilico demo`: thin Typer commands over `insilico.loop`.

Registered by `insilico/cli.py` as `app.command("run")(run_command)` and
`app.command("demo")(demo_command)`. Heavy imports (torch) happen inside.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from insilico.console import console
from insilico.errors import friendly_errors
from stimuli.errors import InputError


def run_command(
    protocol: str = typer.Argument(..., help="Protocol: a TOML file, or a shipped one by name (characterize, "
                                   "mei_closed_loop, finetune, new_retina)."),
    model: Path = typer.Option(None, "--model", help="The twin's run folder (closed loop, fine-tuning); "
                              "new_retina: the trained core."),
    rig: str = typer.Option(None, "--rig", help="Rig server address, tcp://HOST:PORT (closed loop, characterize, "
                           "new_retina)."),
    out: Path = typer.Option(Path("exp"), "--out", help="Experiment folder; the same command resumes it."),
    keys: Path = typer.Option(None, "--keys", help="CurveZMQ key folder (client.key_secret, server.key)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain TCP without CurveZMQ (loopback only)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds of rig silence before giving up."),
    data: Path = typer.Option(None, "--data", help="finetune: the session file to learn from."),
    live: bool = typer.Option(True, "--live/--no-live", help="Rich live view (off: one line per step)."),
    nwb: Path = typer.Option(None, "--nwb", help="Also write every session as NWB (session.nwb beside "
                             "session.h5), with this TOML of session and subject metadata."),
) -> None:
    """Run a protocol against a rig, or resume it where it stopped."""
    with friendly_errors():
        from insilico import checks
        from insilico.loop.protocol import load_protocol
        from insilico.loop.runner import run_protocol

        if rig is not None and keys is None and not insecure:
            raise InputError("give --keys DIR (CurveZMQ) or --insecure (plain TCP, loopback only)")
        if keys is not None and not keys.is_dir():
            raise FileNotFoundError(f"--keys {keys}: no such folder (make one with `insilico rig keys --out {keys}`)")
        if model is not None and not model.exists():
            raise FileNotFoundError(f"--model {model}: no such run folder or model.pt")
        if data is not None:
            checks.input_file(data, "--data", "recording")
        if not timeout > 0:
            raise InputError(f"--timeout must be > 0 seconds, got {timeout:g}")
        # A protocol's mistakes come before anything else is read or contacted.
        for note in load_protocol(protocol).notes:
            console.print(f"[yellow]note[/]: {escape(note)}")
        checks.output_folder(out, "--out")
        try:
            outcome = run_protocol(protocol, model, rig, out, keys=keys, insecure=insecure, timeout_s=timeout,
                                   data=data, live=live, nwb=nwb)
        except KeyboardInterrupt:
            raise typer.Exit(code=130) from None  # the runner said how to resume
        console.print(f"{outcome.kind}: finished in {outcome.seconds:.0f} s; results in [bold]{outcome.out}[/]")
        if outcome.report is not None:
            console.print(f"report: [bold]{outcome.report}[/]")


def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the demo's data, twin, experiment and report."),
    live: bool = typer.Option(True, "--live/--no-live", help="Rich live view (off: one line per step)."),
    new_retina: bool = typer.Option(False, "--new-retina", help="Then fit a retina the twin never saw onto its core "
                                    "and design for it (the new_retina protocol at demo sizes)."),
) -> None:
    """The closed loop on built-in data: simulate, train, design, present to a simulated rig, report."""
    with friendly_errors():
        from insilico import checks
        from insilico.loop.demo import run_demo

        checks.output_folder(out, "--out")

        try:
            run_demo(out, live=live, new_retina=new_retina)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: run `insilico demo --out {out}` again to continue")
            raise typer.Exit(code=130) from None
