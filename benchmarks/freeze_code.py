"""Freeze the installed package for a long run: later edits of the checkout cannot reach it.

A distillation or a seed series runs for hours from a run folder outside the repository
(``/work/runs/...``), while the checkout keeps changing. With an editable install, every
module imported late (and every new process) would read today's files; so this copies the
package as it is now (its Python files and the compiled ``_C`` the running install loads)
into ``DEST/code/efficientad_ext`` and writes ``DEST/code/launch.py``, which runs a script or
a module against that copy and nothing else (the benchmark scripts are copied too, to
``DEST/code/benchmarks``, with ``DEST/shared`` linked to the checkout's ``../shared``):

    python benchmarks/freeze_code.py /work/runs/teacher
    python /work/runs/teacher/code/launch.py -m efficientad_ext distill ...
    python /work/runs/seeds/code/launch.py /work/runs/seeds/code/benchmarks/side_by_side.py ...

An existing ``DEST/code`` is kept as it is (a resumed run must run the code it started with);
``--replace`` freezes anew. ``DEST/code/FROZEN`` records the commit and whether the tree had
uncommitted changes.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_SOURCE = HERE.parent / "python" / "efficientad_ext"

LAUNCHER = '''"""Runs a script or ``-m module`` against the package frozen beside this file."""
import runpy
import sys
from pathlib import Path

# Editable installs put a finder in front of sys.path; drop it so the frozen copy is found.
sys.meta_path = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
for name in [n for n in sys.modules if n == "efficientad_ext" or n.startswith("efficientad_ext.")]:
    del sys.modules[name]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if len(sys.argv) < 2:
    raise SystemExit("usage: launch.py SCRIPT [ARGS...] | launch.py -m MODULE [ARGS...]")
if sys.argv[1] == "-m":
    module, sys.argv = sys.argv[2], sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
else:
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
'''


def compiled_extension() -> Path:
    """The ``_C`` shared library that this Python's install of the package loads."""
    spec = importlib.util.find_spec("efficientad_ext._C")
    if spec is None or spec.origin is None:
        raise SystemExit("efficientad_ext._C is not built in this Python: run `pip install .` first")
    return Path(spec.origin)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def freeze(dest: Path, replace: bool = False) -> Path:
    code = dest / "code"
    if code.exists() and not replace:
        print(f"{code} exists: kept (the code this run started with; --replace freezes anew)")
        return code
    extension = compiled_extension()
    staging = dest / "code.partial"  # complete before it takes the name `code`
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(PACKAGE_SOURCE, staging / "efficientad_ext", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(extension, staging / "efficientad_ext" / extension.name)
    build_config = extension.parent / "_build_config.json"
    if build_config.is_file():
        shutil.copy2(build_config, staging / "efficientad_ext" / build_config.name)
    shutil.copytree(HERE, staging / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "results", "*.md"))
    (staging / "launch.py").write_text(LAUNCHER)
    # What was copied: the package and the benchmark scripts (not their results or notes).
    copied = ("python", "benchmarks", ":(exclude)benchmarks/results", ":(exclude)benchmarks/*.md")
    dirty = "with uncommitted changes" if _git("status", "--porcelain", "--", *copied) else "clean"
    (staging / "FROZEN").write_text(f"commit {_git('rev-parse', 'HEAD')} ({dirty}); extension {extension.name}\n")
    if code.exists():
        shutil.rmtree(code)
    staging.rename(code)
    # The frozen benchmarks find ../shared two levels above themselves, as in the checkout.
    shared, link = HERE.parent.parent / "shared", dest / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)
    print(f"frozen into {code}: {(code / 'FROZEN').read_text().strip()}")
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="the run folder (the copy goes to DEST/code)")
    ap.add_argument("--replace", action="store_true", help="freeze anew even if DEST/code exists")
    args = ap.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    freeze(args.dest, args.replace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
