"""Several processes: data-parallel training under torchrun, one Optuna study on PostgreSQL."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vist_model.fit_twin import TwinSpec, train_twin
from vist_model.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# 16 windows an epoch (coverage 3.8 of 540 training frames / 128), so the two ranks' shares of
# every step are exactly one process's batch: torchrun pads an uneven epoch with repeats.
DDP_CONFIG = dict(epochs=2, warmup_epochs=1, coverage=3.8, lr=2e-3)
TRAIN_SCRIPT = """
import sys
from vist_model.fit_twin import TwinSpec, train_twin
from vist_model.train import TrainConfig
train_twin(sys.argv[1], ["mov1"], sys.argv[2], spec=TwinSpec(kind="cnn"),
           config=TrainConfig(batch_size=int(sys.argv[3]), **{config}), device="cpu")
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_torchrun_processes_train_as_one_with_their_batches_together(tiny_recording: Path, tmp_path: Path) -> None:
    # The CNN twin's loss (Poisson) is a mean over windows, and it has no dropout or BatchNorm,
    # so two ranks of 2 windows a step are one process of 4 up to rounding. (The LN is fitted in
    # closed form, not by these steps.)
    one = train_twin(tiny_recording, ["mov1"], tmp_path / "one", spec=TwinSpec(kind="cnn"),
                     config=TrainConfig(batch_size=4, **DDP_CONFIG), device="cpu").result
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.format(config=DDP_CONFIG))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tiny_recording), str(tmp_path / "two"), "2"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "train.json").read_text())  # written by rank 0 alone
    assert two["epochs_run"] == one.epochs_run == 2
    assert two["train_loss"] == pytest.approx(one.train_loss, abs=1e-4)
    assert two["val_loss"] == pytest.approx(one.val_loss, abs=1e-4)
    assert not (tmp_path / "two" / "train_state.pt").exists()


def _postgres_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))  # Debian keeps them off PATH
    return str(versions[-1]) if versions else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a unix socket in a fresh folder; its SQLAlchemy URL.

    PostgreSQL refuses to run as root (CI runs as root): there it runs as the `postgres` user
    the Debian package creates, in a folder that user owns.
    """
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`; .ci/run installs it)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="insilico-pg-"))  # not under pytest's 0700 root folder
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
                        "-o", f"-k {base} -p {port} -c listen_addresses='' -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql+psycopg2://postgres@/postgres?host={base}&port={port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                           timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    # With a unix socket the port only names the socket file; a free TCP port keeps it unique.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER_SCRIPT = """
import sys
from insilico.design.objectives import Window, increase
from insilico.design.parametric import Screen, search_parametric, storage_for
from insilico.design.postprocess import ContrastBudget
from insilico.design.response import TwinResponse
from vist_model.twin import Twin

twin_dir, url, seed = sys.argv[1:4]
response = TwinResponse(Twin.load(twin_dir), lead_in=0)
h, w = response.metadata.frame_shape
screen = Screen(6, h, w, response.metadata.frame_rate)
search_parametric(response, increase(1, Window(2)), ContrastBudget(0.2), screen, "cell1",
                  storage_for(url, "unused.journal"), n_trials=3, cmaes_trials=0, seed=int(seed))
"""


@pytest.mark.slow
def test_two_workers_join_one_optuna_study_on_postgresql(postgres_url: str, tiny_twin_dir: Path,
                                                         tmp_path: Path) -> None:
    import optuna

    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    workers = [subprocess.Popen([sys.executable, str(script), str(tiny_twin_dir), postgres_url, str(seed)],
                                env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for seed in (0, 1)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    study = optuna.load_study(study_name="cell1-tpe", storage=postgres_url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 6 and len(study.trials) == 6  # 3 from each worker, in one study
    assert {t.user_attrs["family"] for t in complete} <= {"drifting_grating", "spot", "moving_bar",
                                                          "full_field_flash", "chirp"}
