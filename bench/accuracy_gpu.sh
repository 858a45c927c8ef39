#!/usr/bin/env bash
# The accuracy benchmark (bench/accuracy.py) on the four shared graphs at once, on one GPU, with the
# teacher trained as it is meant to be: full neighbourhoods, a longer budget, and the teacher width
# picked from WIDTHS on validation afterwards (each width is its own run; `--from-json` merges them,
# and README "Results" names the width whose teachers scored best on validation).
#
#   DATASETS=/data/graphs OUT=runs/gpu bash bench/accuracy_gpu.sh
#
# Env: DATASETS (required; the layout README "Results" describes), OUT (runs/gpu), SEEDS (5),
# GRAPHS ("cora citeseer tolokers amazon"), WIDTHS ("64 256"), LIMIT (seconds per run, 0 = none: a
# run cut short keeps the seeds it finished, bench/accuracy.py saves after every row), PY (python3), TRAIN (the budget overrides below).
set -u
DATASETS=${DATASETS:?set DATASETS to the folder of shared graphs (see README "Results")}
OUT=${OUT:-runs/gpu}
SEEDS=${SEEDS:-5}
WIDTHS=${WIDTHS:-64 256}
GRAPHS=${GRAPHS:-cora citeseer tolokers amazon}
LIMIT=${LIMIT:-0}
PY=${PY:-python3}
TRAIN=${TRAIN:---set epochs=1000 --set patience=100}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "accuracy_gpu.sh: no CUDA device visible to $PY; run bench/accuracy.py directly on CPU" >&2
    exit 2
fi
mkdir -p "$OUT"
declare -A SPECS=(
    [cora]="planetoid:$DATASETS/planetoid/Cora"
    [citeseer]="planetoid:$DATASETS/planetoid/CiteSeer"
    [tolokers]="npz:$DATASETS/heterophilous/tolokers.npz"
    [amazon]="mat:$DATASETS/fraud-amazon/Amazon.mat"
)
for name in $GRAPHS; do
    [[ -n "${SPECS[$name]:-}" ]] || { echo "accuracy_gpu.sh: unknown graph $name; choose from ${!SPECS[*]}" >&2; exit 2; }
done
# The runs share one GPU; each gets two CPU threads for its per-epoch validation metrics. They are
# small full-batch graphs: launch- and Python-bound, so side by side each runs several times slower
# than alone (README "Results" gives what one H200 finished in 440 s).
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
for width in $WIDTHS; do
    for name in $GRAPHS; do
        run="$name-h$width"
        # shellcheck disable=SC2086  # TRAIN is a list of options
        timeout "$LIMIT" "$PY" bench/accuracy.py --dataset "${SPECS[$name]}" --seeds "$SEEDS" \
            --students auto,mlp --variants scratch,response --set teacher_hidden="$width" $TRAIN \
            --teacher-cache "$OUT/teachers-h$width" --json "$OUT/$run.json" >"$OUT/$run.log" 2>&1 &
    done
done
wait
for log in "$OUT"/*.log; do echo "== $log"; tail -n 3 "$log"; done
