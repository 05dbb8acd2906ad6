"""`insilico rig ...`: serve a rig, make keys, present a stimulus file (no torch anywhere)."""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from stimuli.errors import InputError, InsilicoError


@dataclass(frozen=True)
class BackendSettings:
    """What `insilico rig serve` builds its backend from; `serve`'s defaults are read from here."""

    backend: str = "sim"  # "sim" (simulated retina, no display) or "psychopy"
    sim_seed: int = 0
    sim_cells: int = 90
    sim_size: int = 64
    sim_rate: float = 30.0
    realtime: bool = False  # sim: release frames at the pace they would be shown
    spike_format: str = "times"  # sim: spike "times" or "counts" per frame
    profile: Path = Path("rigs/default.toml")  # psychopy: rig profile TOML
    headless: bool = False  # psychopy: offscreen-style window (Xvfb)
    spikes: str = "sim"  # psychopy: spike source, "sim" or "openephys"
    openephys: str = "tcp://127.0.0.1:5556"  # Open Ephys ZMQ interface data address
    cell_map: Path | None = None  # CSV electrode,sorted_id,cell_id for Open Ephys
    photodiode_line: int = 0  # Open Ephys TTL line of the photodiode
    sample_rate: float = 30_000.0  # rig sample clock (Hz)


B = BackendSettings

rig_app = typer.Typer(help="The rig bridge: serve a rig, make CurveZMQ keys, present stimuli.",
                      no_args_is_help=True, add_completion=False)


@rig_app.command()
def serve(
    backend: Annotated[str, typer.Option(help="sim (simulated retina, no display) or psychopy")] = B.backend,
    port: Annotated[int, typer.Option(help="TCP port for controllers")] = 5555,
    host: Annotated[str | None, typer.Option(help="address to bind (default 0.0.0.0 with keys, 127.0.0.1 insecure)")] = None,
    keys: Annotated[Path | None, typer.Option(help="key directory from `insilico rig keys`")] = None,
    insecure: Annotated[bool, typer.Option(help="plain TCP without CurveZMQ (loopback only)")] = False,
    force_insecure: Annotated[bool, typer.Option(help="allow plain TCP on a non-loopback address")] = False,
    sim_seed: Annotated[int, typer.Option(help="seed of the simulated retina and its spikes")] = B.sim_seed,
    sim_cells: Annotated[int, typer.Option(help="cells of the simulated retina")] = B.sim_cells,
    sim_size: Annotated[int, typer.Option(help="screen side (pixels) the simulated retina sees")] = B.sim_size,
    sim_rate: Annotated[float, typer.Option(help="frame rate (Hz) of the simulated retina")] = B.sim_rate,
    realtime: Annotated[bool, typer.Option(help="sim: release frames at the pace they would be shown")] = B.realtime,
    spike_format: Annotated[str, typer.Option(help="sim: stream spike 'times' or 'counts' per frame")] = B.spike_format,
    store: Annotated[Path | None, typer.Option(help="rig store directory (stimuli, finished presentations)")] = None,
    profile: Annotated[Path, typer.Option(help="psychopy: rig profile TOML")] = B.profile,
    headless: Annotated[bool, typer.Option(help="psychopy: offscreen-style window (Xvfb)")] = B.headless,
    spikes: Annotated[str, typer.Option(help="psychopy: spike source, 'sim' or 'openephys'")] = B.spikes,
    openephys: Annotated[str, typer.Option(help="Open Ephys ZMQ interface data address")] = B.openephys,
    cell_map: Annotated[Path | None, typer.Option(help="CSV electrode,sorted_id,cell_id for Open Ephys")] = B.cell_map,
    photodiode_line: Annotated[int, typer.Option(help="Open Ephys TTL line of the photodiode")] = B.photodiode_line,
    sample_rate: Annotated[float, typer.Option(help="rig sample clock (Hz)")] = B.sample_rate,
    heartbeat: Annotated[float, typer.Option(help="heartbeat interval (s)")] = 0.5,
) -> None:
    """Run a rig server until interrupted."""
    from rig_bridge.server import RigServer, ServerConfig, default_store_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if backend not in ("sim", "psychopy"):
        raise typer.BadParameter(f"--backend must be sim or psychopy, got {backend!r}")
    from rig_bridge.transport import InsecureAddressError, check_insecure, endpoint

    if not insecure and keys is None:
        raise typer.BadParameter("give --keys DIR (CurveZMQ) or --insecure (plain TCP, loopback only)")
    if insecure and keys is not None:
        raise typer.BadParameter("give either --keys DIR (CurveZMQ) or --insecure (plain TCP), not both")
    bind = host or ("127.0.0.1" if insecure else "0.0.0.0")
    if insecure:
        try:
            check_insecure(bind, force_insecure)
        except InsecureAddressError as err:
            raise typer.BadParameter(f"--host {bind}: {err}") from None
    rig = make_backend(BackendSettings(backend=backend, sim_seed=sim_seed, sim_cells=sim_cells, sim_size=sim_size,
                                       sim_rate=sim_rate, realtime=realtime, spike_format=spike_format,
                                       profile=profile, headless=headless, spikes=spikes, openephys=openephys,
                                       cell_map=cell_map, photodiode_line=photodiode_line, sample_rate=sample_rate))
    config = ServerConfig(host=bind, port=port, store_dir=store or default_store_dir(), keys_dir=keys,
                          insecure=insecure, allow_remote_insecure=force_insecure, heartbeat_s=heartbeat,
                          rig_seed=sim_seed)
    server = RigServer(rig, config)
    # SIGTERM stops cleanly like Ctrl-C; SIGKILL is what the crash tests use.
    signal.signal(signal.SIGTERM, lambda *_: server.stop_soon())
    typer.echo(f"rig serving {backend} on {endpoint(bind, port)} ({'plain TCP' if insecure else 'CurveZMQ'})", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    except (OSError, InsilicoError) as err:  # bind failed, unreadable keys: one line, no traceback
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    finally:
        rig.close()


def make_backend(s: BackendSettings):  # noqa: ANN201 (a SimBackend or a PsychopyBackend, imported lazily)
    """The rig's backend: the simulated retina, or PsychoPy with simulated or Open Ephys spikes."""
    if s.backend == "sim":
        from rig_bridge.retina.backend import SimBackend

        return SimBackend(n_cells=s.sim_cells, size=s.sim_size, frame_rate=s.sim_rate, seed=s.sim_seed,
                          realtime=s.realtime, sample_rate=s.sample_rate, spike_format=s.spike_format)
    from rig_bridge.psychopy_backend import OpenEphysSource, PsychopyBackend, SimulatedSource

    if s.spikes == "sim":
        source = SimulatedSource(n_cells=s.sim_cells, size=s.sim_size, frame_rate=s.sim_rate, seed=s.sim_seed,
                                 sample_rate=s.sample_rate)
    elif s.spikes == "openephys":
        from rig_bridge.openephys import CellMap, OpenEphysSubscriber

        if s.cell_map is None:
            raise typer.BadParameter("--spikes openephys needs --cell-map CSV (electrode,sorted_id,cell_id)")
        sub = OpenEphysSubscriber(s.openephys, CellMap.load(s.cell_map), photodiode_line=s.photodiode_line).start()
        source = OpenEphysSource(sub, s.sample_rate)
    else:
        raise typer.BadParameter(f"--spikes must be sim or openephys, got {s.spikes!r}")
    return PsychopyBackend(s.profile, source, headless=s.headless)


@rig_app.command()
def keys(
    out: Annotated[Path, typer.Option(help="directory for the key files")],
    overwrite: Annotated[bool, typer.Option(help="replace existing keys")] = False,
) -> None:
    """Generate a rig (server) and a controller (client) CurveZMQ key pair."""
    from rig_bridge.keys import generate_keys

    try:
        generate_keys(out, overwrite=overwrite)
    except FileExistsError:
        # The library's message names its parameter (overwrite=True); a user types the flag.
        typer.echo(f"error: {out} already holds keys; pass --overwrite to replace them", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"keys written to {out}: rig needs server.key_secret + authorized_clients/, "
               "controller needs client.key_secret + server.key")


@rig_app.command()
def present(
    stim: Annotated[Path, typer.Argument(help="stimulus file (recording-v1)")],
    out: Annotated[Path, typer.Option(help="session recording to append to (created if missing)")],
    rig: Annotated[str, typer.Option(help="rig address")] = "tcp://127.0.0.1:5555",
    repeats: Annotated[int, typer.Option(help="times to show the stimulus")] = 1,
    isi: Annotated[int, typer.Option(help="grey frames between repeats")] = 0,
    keys: Annotated[Path | None, typer.Option(help="key directory (client.key_secret, server.key)")] = None,
    insecure: Annotated[bool, typer.Option(help="plain TCP (loopback only)")] = False,
    timeout: Annotated[float, typer.Option(help="seconds of rig silence before giving up")] = 10.0,
    nwb: Annotated[Path | None, typer.Option(help="also write the whole session as this NWB file")] = None,
    nwb_metadata: Annotated[Path | None, typer.Option(help="TOML of session and subject metadata for --nwb "
                                                      "(subject_id, species, sex, age, ...)")] = None,
) -> None:
    """Present STIM on the rig and append the evoked spike counts to the session recording."""
    from rig_bridge.client import RigClient, load_stimulus_file

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    if keys is None and not insecure:  # before the transport's message, which names keys_dir=
        typer.echo("error: give --keys DIR (CurveZMQ) or --insecure (plain TCP, loopback only)", err=True)
        raise typer.Exit(2)
    try:
        meta = _nwb_metadata(nwb, nwb_metadata, out)  # refused before the rig shows anything
        frames, rate = load_stimulus_file(stim)
        with RigClient(rig, keys, insecure=insecure, timeout_s=timeout) as client:
            counts = client.present(frames, repeats=repeats, isi_grey_frames=isi, session_path=out,
                                    frame_rate=rate)
        if nwb is not None:
            from stimuli.nwb import export_nwb

            export_nwb(out, nwb, meta)
    except (InsilicoError, FileNotFoundError) as err:  # RigError is one
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"stored {counts.shape[0]} x {counts.shape[1]} frames x {counts.shape[2]} cells, "
               f"{int(counts.sum())} spikes, in {out}" + (f"; session written as NWB to {nwb}" if nwb else ""))


def _nwb_metadata(nwb: Path | None, metadata: Path | None, session: Path):  # noqa: ANN202
    """The metadata an NWB copy of the session needs, checked complete now (None without --nwb)."""
    if nwb is None:
        if metadata is not None:
            raise InputError("--nwb-metadata is for --nwb FILE.nwb: give both")
        return None
    from stimuli.nwb import NwbSessionMetadata
    from stimuli.recording import open_recording

    meta = NwbSessionMetadata.from_toml(metadata) if metadata else NwbSessionMetadata()
    if session.is_file():
        with open_recording(session) as rec:
            meta = meta.filled_from(rec.attrs)
    if meta.missing():
        raise InputError(f"--nwb needs the subject's {', '.join(meta.missing())}: give them in --nwb-metadata FILE.toml")
    return meta


def main() -> None:
    rig_app()


if __name__ == "__main__":
    sys.exit(main())
