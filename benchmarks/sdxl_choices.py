"""The two SDXL choices issue 7 leaves to measurement, measured on the shipped SDXL reference model.

    python benchmarks/sdxl_choices.py [--model reference-xl-32px] [--never-trained 12]

1. **The empty prompt**: the encoded empty string, or zeros (what ``force_zeros_for_empty_prompt``
   makes the stock pipeline use when no negative is given). It is both the error ratio's baseline
   and the negative of every generation.
2. **Soft tokens in the two encoders**: separate variables per encoder (``token_embeddings``), or
   one set shared through the least-squares map between the encoders' tables
   (``shared_token_embeddings``).

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
    ("encoded empty prompt, separate soft tokens (default)", {}, {"empty_prompt": "encoded"}),
    ("zeros empty prompt, separate soft tokens", {}, {"empty_prompt": "zeros"}),
    ("encoded empty prompt, shared soft tokens", {"inversion_space": "shared_token_embeddings"},
     {"empty_prompt": "encoded"}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-xl-32px")
    parser.add_argument("--never-trained", type=int, default=12)
    args = parser.parse_args()
    compare(args.model, args.never_trained, VARIANTS)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
