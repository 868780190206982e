"""anomalib 2.7's own training loop (``../shared/tools/anomalib_train_loop.py``, run unchanged),
its trained model saved for our evaluator to score branch by branch.

The tool trains anomalib's ``EfficientAdModel`` and prints its image AUROC of the combined map
only. This runs the tool in-process (``runpy``), takes the trained model and the quantiles it
computed from its globals, and saves them with the tool's own AUROC and training time to
SAVE_PATH (``torch.save``, atomically). ``side_by_side.py --branches`` then converts the model
to ours (inference conformant to anomalib's within 1.4e-5, ``tests/test_peers_anomalib.py``)
and evaluates it in its own Python (:func:`anomalib_curve.score_anomalib_model`): image AUROC,
pixel AUROC and AU-PRO of the local map, the global map and the combined map. So anomalib's
Python needs anomalib and scikit-learn only, not efficientad_ext.

    SEED=0 python benchmarks/anomalib_loop_branches.py DATASET PENALTY_DIR STEPS TEACHER SAVE_PATH
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import warnings
from pathlib import Path

import torch

# The tool beside the checkout (../shared/tools), or where $ANOMALIB_TRAIN_LOOP points.
TOOL = Path(
    os.environ.get(
        "ANOMALIB_TRAIN_LOOP", Path(__file__).resolve().parents[2] / "shared" / "tools" / "anomalib_train_loop.py"
    )
)


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        raise SystemExit(__doc__)
    *tool_argv, save_path = argv
    sys.argv = [str(TOOL), *tool_argv]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tool = runpy.run_path(str(TOOL), run_name="__main__")
    save = Path(save_path)
    tmp = save.with_name(save.name + ".tmp")
    torch.save(
        {
            "model": tool["m"].state_dict(),
            "quantiles": {k: v.float() for k, v in tool["q"].items()},
            "tool_image_auroc": float(tool["auc"]),
            "seconds_per_step": tool["train_s"] / int(tool_argv[2]),
        },
        tmp,
    )
    os.replace(tmp, save)
    print(json.dumps({"saved": str(save), "tool_image_auroc": float(tool["auc"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
