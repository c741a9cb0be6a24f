"""The flow-matching choices issue 8 leaves to measurement, measured on the shipped SD3-architecture model.

    python benchmarks/flow_choices.py [--model reference-sd3-32px] [--never-trained 12] [--threads N]

1. **The timestep density** the inversion draws from and the error grid follows
   (``flow_timestep_density``): ``logit_normal`` (mean 0, std 1: SD3's training density and diffusers'
   SD3 training script's default) or ``uniform`` over the scheduler's shifted table.
2. **The error form** (``error_form``): ``native`` (the model's own loss, ``|| v - (noise - x0) ||^2``) or
   ``x0`` (the clean latent the prediction implies: InvMM's form, diffusers' ``precondition_outputs``).

Each variant certifies the model's memorized images and the first ``--never-trained`` never-trained
ones with verifier's defaults otherwise, and prints what ``choices.compare`` prints. One run per variant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from choices import compare  # noqa: E402

VARIANTS = [
    ("logit-normal density, native error (default)", {"flow_timestep_density": "logit_normal"}, {}),
    ("uniform density, native error", {"flow_timestep_density": "uniform"}, {}),
    ("logit-normal density, x0 error", {"error_form": "x0"}, {}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-sd3-32px")
    parser.add_argument("--never-trained", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    compare(args.model, args.never_trained, VARIANTS)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
