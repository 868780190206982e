"""anomalib 2.7's own training loop (``../shared/tools/anomalib_train_loop.py``, run unchanged),
then its trained model scored by our evaluator, branch by branch.

The tool trains anomalib's ``EfficientAdModel`` and prints its image AUROC of the combined map
only. This runs the tool in-process (``runpy``), takes the trained model and the quantiles it
computed from its globals, converts them to our model (inference is conformant to anomalib's
within 1.4e-5, ``tests/test_peers_anomalib.py``) and evaluates that on the same test set with
:func:`efficientad_ext.evaluation.evaluator.evaluate`: image AUROC, pixel AUROC and AU-PRO of
the local map, the global map and the combined map. Prints one JSON line (the last line).

    SEED=0 python benchmarks/anomalib_loop_branches.py DATASET PENALTY_DIR STEPS TEACHER

Needs anomalib (``.ci/peers-requirements.txt``), scikit-learn and efficientad_ext in this Python.
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
    if len(argv) != 4:
        raise SystemExit(__doc__)
    from efficientad_ext.data import open_dataset
    from efficientad_ext.evaluation.evaluator import evaluate
    from efficientad_ext.formats.anomalib import from_anomalib_state_dict

    sys.argv = [str(TOOL), *argv]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tool = runpy.run_path(str(TOOL), run_name="__main__")
    anomalib_model, q = tool["m"], tool["q"]
    model = from_anomalib_state_dict(anomalib_model.state_dict())
    with torch.no_grad():
        model.quantiles.copy_(torch.stack([q[k].float() for k in ("qa_st", "qb_st", "qa_ae", "qb_ae")]))
    model.calibrated = True
    metrics = evaluate(model, open_dataset(argv[0]).test, out_dir=None, write_images=False)
    print(
        json.dumps(
            {
                "tool_image_auroc": float(tool["auc"]),
                "seconds_per_step": tool["train_s"] / int(argv[2]),
                **{
                    k: metrics.get(k)
                    for k in ("image_auroc", "pixel_auroc", "au_pro", "image_auroc_per_type", "branches")
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
