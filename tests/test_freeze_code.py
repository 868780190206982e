"""benchmarks/freeze_code.py: a long run imports the frozen copy, never the changing checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _freeze(dest: Path, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "freeze_code.py"), str(dest), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_the_launcher_runs_the_frozen_copy_and_a_resume_keeps_it(tmp_path):
    assert "frozen into" in _freeze(tmp_path)
    code = tmp_path / "code"
    assert (code / "efficientad_ext" / "__init__.py").is_file() and (code / "benchmarks" / "side_by_side.py").is_file()
    assert list((code / "efficientad_ext").glob("_C*"))  # the compiled ops travel with it
    assert (code / "FROZEN").read_text().startswith("commit ")
    marker = code / "efficientad_ext" / "formats" / "frozen_marker.py"
    marker.write_text("HERE = 'frozen'\n")  # only the copy has this module
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import efficientad_ext, torch\n"
        "from efficientad_ext.formats import frozen_marker\n"
        "import efficientad_ext.ops\n"
        "print(efficientad_ext.__file__, frozen_marker.HERE, hasattr(torch.ops.efficientad, 'anomaly_maps'))\n"
    )
    out = subprocess.run(
        [sys.executable, str(code / "launch.py"), str(probe)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert Path(out[0]).is_relative_to(code) and out[1:] == ["frozen", "True"]
    assert "kept" in _freeze(tmp_path)  # a resumed run keeps the code it started with
    assert marker.is_file()
    _freeze(tmp_path, "--replace")
    assert not marker.exists()
    out = subprocess.run(
        [sys.executable, str(code / "launch.py"), "-m", "efficientad_ext", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "distill" in out.stdout
