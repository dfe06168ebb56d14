#!/usr/bin/env bash
# Does a change alter training? Runs the same command at a base revision (in a temporary git worktree) and in
# the working tree, then compares the two logs' train and eval records, timing fields aside (keys starting
# with "seconds", and gen_tokens_per_s). The config record is not compared: a refactor may rename fields.
#
#   bash bench/same_log.sh BASE_REV                          # the tiny demo, python mtgrpo.py --model tiny
#   bash bench/same_log.sh BASE_REV --method dapo --steps 20 # any mtgrpo.py arguments
#
# Prints IDENTICAL, or the first record that differs, and exits 1 then.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bash bench/same_log.sh BASE_REV [mtgrpo.py arguments]}
shift
args=("--model" "tiny" "$@")
tmp=$(mktemp -d /tmp/same_log.XXXX)
git worktree add -q --detach "$tmp/base" "$base"
trap 'git worktree remove --force "$tmp/base"' EXIT
(cd "$tmp/base" && python3 mtgrpo.py "${args[@]}" --out-dir "$tmp/a" > "$tmp/a.out" 2>&1) || { echo "base run failed: $tmp/a.out"; exit 1; }
python3 mtgrpo.py "${args[@]}" --out-dir "$tmp/b" > "$tmp/b.out" 2>&1 || { echo "working-tree run failed: $tmp/b.out"; exit 1; }
python3 - "$tmp/a/log.jsonl" "$tmp/b/log.jsonl" <<'EOF'
import json, sys
def records(path):
    out = []
    for r in map(json.loads, open(path)):
        if r.get("kind") in ("train", "eval"):
            out.append({k: v for k, v in r.items() if not k.startswith("seconds") and k != "gen_tokens_per_s"})
    return out
a, b = records(sys.argv[1]), records(sys.argv[2])
for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
        keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        sys.exit(f"DIFFERENT at record {i} ({x.get('kind')} step {x.get('step')}): {keys}")
if len(a) != len(b):
    sys.exit(f"DIFFERENT: {len(a)} records at the base, {len(b)} now")
print(f"IDENTICAL: {len(a)} train/eval records, timing fields aside")
EOF
