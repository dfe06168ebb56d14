#!/usr/bin/env bash
# A workload of bench/README.md side by side: TRL's GRPOTrainer (in its own venv) and our trainer, run alternately
# RUNS times each (default 3; which side goes first alternates too), back to back so both see the same machine.
# WORKLOAD=W1 (default): bench/trl_peer.py against bench/w1.py, the tiny model; targets step <= 0.8x TRL, peak
# RSS <= 0.6x TRL. WORKLOAD=W2: bench/trl_w2.py against bench/w2.py, SmolLM2-135M-Instruct on Countdown r1
# prompts, 4 x 8 x 64 tokens (the model directory must exist: `python bench/smollm2.py`; ~3-5 min a run).
# Prints each run's six figures, then ours/TRL for the step time (median over runs of each run's median) and
# for peak RSS.
#
#   bash bench/compare_trl.sh                 # from the repo root; RUNS=5 bash bench/compare_trl.sh
#   WORKLOAD=W2 bash bench/compare_trl.sh     # real shapes
#   OURS_ARGS="--micro-batch-size 64" bash bench/compare_trl.sh   # time a variant of ours
#
# Each side runs in its own venv, created on first use: TRL's as bench/README.md says, ours
# with exactly what CI installs (torch==2.13.0 -r requirements.txt). Peak RSS includes every module
# the process imports, so neither side may see packages the other lacks (scipy, pulled in by
# transformers when present, alone adds ~40 MB). Extra arguments (--steps, --threads) go to both.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OURS_ARGS=${OURS_ARGS:-}
VENV=/tmp/venv-trl
VENV_OURS=/tmp/venv-mtgrpo
if [ ! -x "$VENV_OURS/bin/python" ] || ! "$VENV_OURS/bin/python" -c "import transformers" 2>/dev/null; then
  python3 -m venv "$VENV_OURS"
  "$VENV_OURS/bin/pip" install torch==2.13.0 -r requirements.txt
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import trl" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install torch==2.13.0
  "$VENV/bin/pip" install trl torch==2.13.0
fi
case "${WORKLOAD:=W1}" in
  W1) PEER=bench/trl_peer.py; OURS=bench/w1.py ;;
  W2) PEER=bench/trl_w2.py; OURS=bench/w2.py ;;
  *) echo "WORKLOAD must be W1 or W2, got $WORKLOAD" >&2; exit 2 ;;
esac
OUT=$(mktemp -d /tmp/compare_trl.XXXX)
run() {  # run IMPL I: one benchmark run, its figures to $OUT/IMPL.I; a failure names its log and stops
  local impl=$1 i=$2 rc=0
  if [ "$impl" = trl ]; then
    "$VENV/bin/python" "$PEER" "${ARGS[@]}" > "$OUT/trl.$i" 2> "$OUT/trl.$i.err" || rc=$?
  else
    "$VENV_OURS/bin/python" "$OURS" $OURS_ARGS "${ARGS[@]}" > "$OUT/ours.$i" 2> "$OUT/ours.$i.err" || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    echo "error: $impl run $i failed (exit $rc); its stderr, $OUT/$impl.$i.err, ends:" >&2
    tail -n 5 "$OUT/$impl.$i.err" >&2
    exit 1
  fi
}
ARGS=("$@")
for i in $(seq 1 "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then run trl "$i"; run ours "$i"; else run ours "$i"; run trl "$i"; fi  # alternate who goes first
  for impl in trl ours; do
    echo "== $impl run $i: $(grep '^other_processes_cpu' "$OUT/$impl.$i")"
    tail -n 6 "$OUT/$impl.$i" | paste -sd' '
  done
done
python3 - "$OUT" "$RUNS" <<'EOF'
import statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def figs(impl):  # the last six `name value` lines of each run -> {name: [values over runs]}
    runs_ = [dict(l.split(" ", 1) for l in open(f"{out}/{impl}.{i}").read().splitlines()[-6:]) for i in range(1, runs + 1)]
    return {k: [float(r[k]) for r in runs_] for k in ("seconds_per_step_median", "peak_rss_mb")}
t, o = figs("trl"), figs("ours")
step = statistics.median(o["seconds_per_step_median"]) / statistics.median(t["seconds_per_step_median"])
rss = statistics.median(o["peak_rss_mb"]) / statistics.median(t["peak_rss_mb"])
print(f"median s/step  ours {statistics.median(o['seconds_per_step_median']):.4f}  trl {statistics.median(t['seconds_per_step_median']):.4f}")
print(f"median RSS MB  ours {statistics.median(o['peak_rss_mb']):.1f}  trl {statistics.median(t['peak_rss_mb']):.1f}")
print(f"ratio step_time ours/trl {step:.3f}  (W1's target <= 0.80: {'met' if step <= 0.8 else 'NOT met'})")
print(f"ratio peak_rss  ours/trl {rss:.3f}  (W1's target <= 0.60: {'met' if rss <= 0.6 else 'NOT met'})")
EOF
echo "raw outputs: $OUT"
