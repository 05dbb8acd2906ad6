"""The rig computer has no torch: what it runs must import and work without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A finder that refuses the heavy packages, as on a machine without them. (Setting
# sys.modules['torch'] = None is not the same: scipy then believes torch is loaded.)
BLOCK = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'captum', 'optuna'):
            raise ImportError(f'{name} is not installed on the rig')
sys.meta_path.insert(0, NotInstalled())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_rig_packages_import_without_torch() -> None:
    out = _run(
        "import stimuli.families, stimuli.natural, stimuli.recording, stimuli.presentation\n"
        "import rig_bridge.server, rig_bridge.client, rig_bridge.cli, rig_bridge.retina\n"
        "import rig_bridge.retina.backend, rig_bridge.retina.recording  # the whole simulator\n"
        "import rig_bridge.psychopy_backend\n"
        "assert not {'insilico', 'vist_model', 'torch'} & {m.split('.')[0] for m in sys.modules}\n"
    )
    assert out.returncode == 0, out.stderr


def test_insilico_rig_and_inspect_commands_run_without_torch(tmp_path: Path) -> None:
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
    out = _run(code)
    assert out.returncode == 0, out.stderr + out.stdout
