"""The rig computer has no torch: what it runs must import and work without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def _run(without_torch: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", without_torch + code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_rig_packages_import_without_torch(without_torch: str) -> None:
    out = _run(
        without_torch,
        "import stimuli.families, stimuli.natural, stimuli.recording, stimuli.presentation\n"
        "import rig_bridge.server, rig_bridge.client, rig_bridge.cli, rig_bridge.retina\n"
        "import rig_bridge.retina.backend, rig_bridge.retina.recording  # the whole simulator\n"
        "import rig_bridge.psychopy_backend\n"
        "assert not {'insilico', 'vist_model', 'torch'} & {m.split('.')[0] for m in sys.modules}\n"
    )
    assert out.returncode == 0, out.stderr


def test_insilico_rig_and_inspect_commands_run_without_torch(tmp_path: Path, without_torch: str) -> None:
    code = (
        "import numpy as np\n"
        "from typer.testing import CliRunner\n"
        "from insilico.cli import app\n"
        "from stimuli.recording import write_stimulus\n"
        f"write_stimulus({str(tmp_path / 's.h5')!r}, np.full((3, 4, 4), 128, np.uint8), 30.0)\n"
        "r = CliRunner().invoke(app, ['rig', 'keys', '--out', " + repr(str(tmp_path / 'keys')) + "])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['inspect', " + repr(str(tmp_path / 's.h5')) + "])\n"
        "assert r.exit_code == 0, r.output\n"
    )
    out = _run(without_torch, code)
    assert out.returncode == 0, out.stderr + out.stdout


def test_a_twin_command_on_the_rig_computer_says_torch_is_missing(tmp_path: Path, without_torch: str) -> None:
    code = (
        "from typer.testing import CliRunner\n"
        "from insilico.cli import app\n"
        f"r = CliRunner().invoke(app, ['demo', '--out', {str(tmp_path / 'demo')!r}])\n"
        "print(r.exit_code, repr(r.output))\n"
    )
    out = _run(without_torch, code)
    assert out.returncode == 0, out.stderr
    code_line = out.stdout.strip().splitlines()[-1]
    assert code_line.startswith("2 ") and "torch is not installed on this machine" in code_line
    assert "Traceback" not in code_line
