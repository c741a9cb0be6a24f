#!/usr/bin/env bash
# The one GPU run (docs/gpu.md): everything benchmarks/gpu_check.py measures, as JSON plus a log, in $OUT.
#
#   bash benchmarks/gpu_check.sh --download-wheels   # here, with the network: the packages the GPU image lacks
#   bash benchmarks/gpu_check.sh [--budget-s 420]    # there, in the repository root; carry .whl
#   bash benchmarks/gpu_check.sh --smoke             # anywhere: every part on the CPU, tiny sizes (about a minute)
#
# The GPU machine has torch, transformers, accelerate, scikit-image, pytest and the rest of the test tools but
# no network and not diffusers, lpips or pydantic: those travel as wheels in .whl/ (ignored by git), pinned to
# the versions installed where they were downloaded, and are installed into a private folder before the run.
# verifier itself runs from the checkout (PYTHONPATH), not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--download-wheels" ]; then
    packages=$(python3 - <<'EOF'
from importlib.metadata import version
names = ["diffusers", "lpips", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
         "typing-extensions", "importlib-metadata"]
print(" ".join(f"{name}=={version(name)}" for name in names))
EOF
)
    mkdir -p .whl
    # shellcheck disable=SC2086 - one argument per package
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl $packages
    ls .whl
    exit 0
fi

OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
if ! python3 -c "import diffusers, lpips, pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/verifier-site .whl/*.whl
    export PYTHONPATH="/tmp/verifier-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
