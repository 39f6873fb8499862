#!/usr/bin/env bash
# Fit runs on a borrowed GPU machine that has JAX but no TensorFlow (README: "Training on a GPU machine").
#   bash scripts/gpu_fit.sh RUNS_FILE
# RUNS_FILE: one run per line, the trainer flags that decide what it learns (--name N --seed S ...).
# It needs, in the git-ignored .gpu/ beside it (made here by the README's steps, sent over several calls):
#   wheels/*.whl            Keras and what it needs that the machine lacks (pip download, Python 3.12)
#   data.tar.*              the dataset's train and valid folders as one tar, in parts (parts.sha256: their sums)
#   checkpoints/framing/    the landmarks `python -m trainer ... --stop-after landmarks` cached here
# Each finished fit is written to $OUT/<name>.tar.aa, .ab, ... (best weights without the optimizer's state, history,
# fit.json, its log; 14 MB for Lite0, and at most 8 files of 16 MiB, 64 MiB in all, come back from one call);
# here `cat <name>.tar.* | tar -xf - -C checkpoints` and the same trainer command without --stop-after finalize it.
# `scripts/gpu_fit.sh --send NAME ...` sends finished fits again, e.g. those a call ran out of time to return.
# PARALLEL (default 2): fits at once, each with its share of the CPUs (--feed-workers) and of the GPU's memory.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:?usage: scripts/gpu_fit.sh RUNS_FILE | --send NAME ...}"
out="${OUT:-.gpu/out}"
PY="${PY:-python3}"  # there: the Python that holds JAX
mkdir -p "$out"
send() {  # NAME: its fit as $out/NAME.tar.aa, .ab, ... (15 MiB each; 16 MiB is the most one file may come back)
    local d=".gpu/checkpoints/$1" slim=".gpu/send/$1"
    [ -f "$d/fit.json" ] || { echo "no finished fit in $d" >&2; return 1; }
    mkdir -p "$slim"
    # Keras's ModelCheckpoint also saves the optimizer's state (Adam's two moments: 27 of Lite0's 41 MB); finalizing
    # needs only the network's weights, so only those travel (14 MB for Lite0: four fits come back from one call).
    "$PY" - "$d/best.weights.h5" "$slim/best.weights.h5" <<'PYEOF'
import sys, h5py
with h5py.File(sys.argv[1], "r") as src, h5py.File(sys.argv[2], "w") as dst:
    for key in src:
        if key != "optimizer":
            src.copy(src[key], dst, name=key)
    dst.attrs.update(src.attrs)
PYEOF
    cp "$d/history.csv" "$d/fit.json" "$d/train.log" "$slim/"
    tar -cf - -C .gpu/send "$1" | split -b 15m - "$out/$1.tar."
}
if [ "${1:-}" = "--send" ]; then  # again, into this call's $OUT (a call's $OUT starts empty): --send NAME ...
    shift; for name in "$@"; do send "$name"; done; exit 0
fi
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then  # none needed where Keras is installed
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/wheels/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax KERAS_HOME=/tmp/keras PYTHONUNBUFFERED=1
data="${GPU_DATA:-/tmp/data}"
if [ ! -d "$data/train" ]; then
    # A machine left idle for a while between calls is given back with the parts it held: say which are missing.
    (cd .gpu && sha256sum --check --quiet parts.sha256) || {
        echo "data parts missing or damaged (above): send them again, one call each, then run this again" >&2
        exit 3
    }
    mkdir -p "$data"
    cat .gpu/data.tar.* | tar -xf - -C "$data"
fi
fit_one() {  # FLAGS...: one fit (its output in .gpu/<name>.log), then send it
    local name
    name="$(sed -n 's/.*--name[ =]\([^ ]*\).*/\1/p' <<<"$*")"
    [ -n "$name" ] || { echo "no --name in: $*" >&2; return 2; }
    local t0=$SECONDS
    if ! "$PY" -m trainer "$@" --feed-workers "$workers" --data-dir "$data" --checkpoints-dir .gpu/checkpoints \
            --stop-after fit --verbose 2 >".gpu/$name.log" 2>&1; then
        echo "[$name] failed after $((SECONDS - t0)) s:" >&2
        tail -n 25 ".gpu/$name.log" | sed "s/^/[$name] /" >&2
        return 1
    fi
    grep -E "val_loss|trained epochs" ".gpu/$name.log" | sed "s/^/[$name] /"
    cp ".gpu/$name.log" ".gpu/checkpoints/$name/train.log"
    send "$name"
    echo "[$name] fitted and sent in $((SECONDS - t0)) s"
}
lane() {  # K: runs K, K + P, K + 2P, ... of the runs file, one after another (P = PARALLEL)
    local k=$1 i=0 failed=0 line
    while read -r line; do
        [ -z "$line" ] && continue
        # shellcheck disable=SC2086  # the line is a list of flags
        if [ $((i % parallel)) -eq "$k" ]; then fit_one $line || failed=1; fi
        i=$((i + 1))
    done <"$runs"
    return $failed
}
# Fits at once. Two 192-px Lite0 fits at once on an H200 kept ~500 faces/s each (README); each gets its share
# of the CPUs for its Pillow feed and of the GPU's memory (JAX otherwise takes 75 % of it for the first).
parallel="${PARALLEL:-2}"
workers=$(( ($(nproc) - parallel) / parallel ))
[ "$workers" -ge 1 ] || workers=1
XLA_PYTHON_CLIENT_MEM_FRACTION="$(awk -v p="$parallel" 'BEGIN { printf "%.2f", 0.9 / p }')"
export XLA_PYTHON_CLIENT_MEM_FRACTION
echo "$(grep -c . "$runs") runs, $parallel at once, $workers feed workers each"
pids=()
for k in $(seq 0 $((parallel - 1))); do
    lane "$k" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
