#!/usr/bin/env bash
# Fault tests: does a run survive being killed, interrupted, damaged or pointed at a used --out-dir?
#
#   bash bench/faults.sh [ROUNDS]     # ROUNDS kill -9 rounds (default 5); FAULT_SEED=... picks other kill points
#
# One reference run (tiny model, $ARGS below) is trained uninterrupted; each scenario then breaks a run with the
# same arguments, resumes it (--resume DIR) to the end and compares it with the reference: the log.jsonl train and
# eval records (keys starting with "seconds" and gen_tokens_per_s aside, config record aside) must be equal, and
# the last checkpoint's model.safetensors byte-identical or tensor-equal. Scenarios:
#   1 kill -9 at seeded random points, every third round (1, 4, ...) while a checkpoint-*.tmp exists; the resume
#     must start right after the newest complete checkpoint, and at most the current step (--save-every 1) is lost
#   2 SIGINT once: exit 130, the checkpoint named, no traceback     3 SIGTERM once: the same with exit 143
#   4 SIGINT twice 0.05 s apart, 0.1 s into a step: exit 130 within 2 s of the second without finishing that step
#     ("stopped after" not printed), no traceback, resumable from the newest complete checkpoint
#   5 newest trainer_state.pt truncated to half / emptied: --resume DIR/checkpoint-N exits 2 with one error: line
#     naming an older checkpoint, and resuming from that one reaches the reference
#   6 a used --out-dir: refused (exit 2, one error line naming --resume and --overwrite, dir untouched);
#     --overwrite replaces it (old checkpoints gone); --resume of the finished run exits 0 and says so
# Prints PASS/FAIL per scenario run, the total time and "N run, M survived" (survived: the broken run ended equal
# to the reference); exits 1 if any failed. About 3 minutes on 2 idle CPU cores (much longer when shared); temp files in /tmp.
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SEED=${FAULT_SEED:-20261203}
SAVE_EVERY=1
ARGS=(--model tiny --steps 16 --save-every $SAVE_EVERY --eval-every 8 --eval-prompts 8 --eval-k 2)
STEPS=16
TMP=$(mktemp -d /tmp/mtgrpo-faults.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
REF=$TMP/ref
T0=$SECONDS
N=0 M=0 FAILED=0

# driver.py PLAN CMD...: runs CMD, waits until the out-dir log holds train step PLAN.step (then PLAN.delay
# seconds, or until a checkpoint-*.tmp appears if PLAN.tmp), sends PLAN.signals (PLAN.gap apart) and waits for the
# exit. Prints shell assignments: rc, sent, step_at_signal, last_step (after the exit), tmps, exit_after.
cat > "$TMP/driver.py" <<'EOF'
import json, os, re, signal, subprocess, sys, time
spec, cmd = json.loads(sys.argv[1]), sys.argv[2:]
out, base = spec["out_dir"], spec["base"]
def last_step():
    try:
        text = open(os.path.join(out, "log.jsonl")).read()
    except FileNotFoundError:
        return 0
    text = text[:text.rfind("\n") + 1]  # complete lines only
    return max(map(int, re.findall(r'"kind": "train", "step": (\d+)', text)), default=0)
def tmps():
    return sorted(d for d in (os.listdir(out) if os.path.isdir(out) else []) if re.fullmatch(r"checkpoint-\d+\.tmp", d))
res = dict(rc="", sent=0, step_at_signal="", last_step="", tmps="", exit_after="")
with open(base + ".out", "w") as fo, open(base + ".err", "w") as fe:
    p = subprocess.Popen(cmd, stdout=fo, stderr=fe)
    try:
        while p.poll() is None and last_step() < spec["step"]:
            time.sleep(0.01)
        if spec.get("tmp"):
            while p.poll() is None and not tmps():
                time.sleep(0.0005)
        else:
            time.sleep(spec.get("delay", 0.0))
        t_last = None
        for i, name in enumerate(spec["signals"]):
            if i:
                time.sleep(spec.get("gap", 0.05))
            if p.poll() is not None:
                break
            if not i:
                res["step_at_signal"] = last_step()
            p.send_signal(getattr(signal, name))
            res["sent"], t_last = i + 1, time.monotonic()
        res["rc"] = p.wait(timeout=300)
        if t_last is not None:
            res["exit_after"] = f"{time.monotonic() - t_last:.2f}"
    finally:
        if p.poll() is None:
            p.kill(); p.wait()
res["last_step"], res["tmps"] = last_step(), " ".join(tmps())
print("\n".join(f"{k}='{v}'" for k, v in res.items()))
EOF

# compare.py REF RUN [UPTO]: RUN's log records and last checkpoint's weights against REF's (UPTO: only the train
# records of steps <= UPTO, no weights). Prints "ok: ..." (exit 0) or what differs (exit 1).
cat > "$TMP/compare.py" <<'EOF'
import json, os, re, sys
ref, run, upto = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None
def records(d):
    out = []
    for i, line in enumerate(open(os.path.join(d, "log.jsonl")), 1):
        try:
            r = json.loads(line)
        except ValueError:
            sys.exit(f"{d}/log.jsonl line {i} is not JSON: {line[:60]!r}")
        if r.get("kind") != "config" and (upto is None or r.get("kind") == "train" and r["step"] <= upto):
            out.append({k: v for k, v in r.items() if not k.startswith(("seconds", "gen_tokens_per_s"))})
    return out
def newest(d):
    steps = [int(x.split("-")[1]) for x in os.listdir(d) if re.fullmatch(r"checkpoint-\d+", x)]
    return max(steps, default=None)
a, b = records(ref), records(run)
for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
        keys = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
        sys.exit(f"log record {i + 1} ({x.get('kind')} step {x.get('step')}) differs in {', '.join(keys)}")
if len(a) != len(b):
    sys.exit(f"log has {len(b)} train/eval records, the reference {len(a)}")
if leftovers := [x for x in os.listdir(run) if x.endswith(".tmp")]:
    sys.exit(f"leftover {' '.join(leftovers)} after the run finished")
if upto is not None:
    sys.exit(print(f"ok: {len(b)} train records equal"))
sa, sb = newest(ref), newest(run)
if sa != sb:
    sys.exit(f"last checkpoint is checkpoint-{sb}, the reference's checkpoint-{sa}")
fa, fb = (os.path.join(d, f"checkpoint-{sa}", "model.safetensors") for d in (ref, run))
if open(fa, "rb").read() == open(fb, "rb").read():
    sys.exit(print(f"ok: {len(b)} records equal, checkpoint-{sa} weights byte-identical"))
import torch
from safetensors.torch import load_file
ta, tb = load_file(fa), load_file(fb)
if ta.keys() != tb.keys():
    sys.exit(f"checkpoint-{sa} weights hold other tensors: {sorted(ta.keys() ^ tb.keys())[:3]}")
if bad := [k for k in ta if not torch.equal(ta[k], tb[k])]:
    sys.exit(f"checkpoint-{sa} weights differ in {len(bad)} tensors, e.g. {bad[0]} by "
             f"{(ta[bad[0]].float() - tb[bad[0]].float()).abs().max().item():.3g}")
print(f"ok: {len(b)} records equal, checkpoint-{sa} weights tensor-equal (files differ)")
EOF

newest() { # the step of DIR's newest complete checkpoint-STEP (with a trainer_state.pt), or nothing
    local d best=""
    for d in "$1"/checkpoint-*; do
        [[ $d =~ /checkpoint-([0-9]+)$ ]] && [ -f "$d/trainer_state.pt" ] || continue
        [ -z "$best" ] || [ "${BASH_REMATCH[1]}" -gt "$best" ] && best=${BASH_REMATCH[1]}
    done
    echo "$best"
}
first_step() { grep -m1 -oE '^step [0-9]+/' "$1" | grep -oE '[0-9]+'; }
drive() { python3 "$TMP/driver.py" "$1" python3 mtgrpo.py "${ARGS[@]}" --out-dir "$2"; }
traceback() { grep -q Traceback "$1" && echo "traceback in stderr ($(grep -m1 -E '^[A-Za-z]*(Error|Exception|Interrupt)' "$1"))"; }
add_fail() { fail="${fail:+$fail; }$1"; }
compare() { # compare DIR [UPTO]: sets survived, adds to fail or note
    local c
    if c=$(python3 "$TMP/compare.py" "$REF" "$@" 2>&1); then survived=1; note="${note:+$note, }${c#ok: }"; else add_fail "$c"; fi
}
resume() { # resume DIR CHECKPOINT_STEP TAG [ARGS]: resume DIR to the end, check it restarts after CHECKPOINT_STEP
    local d=$1 c=$2 tag=$3 rc f; shift 3
    python3 mtgrpo.py --resume "$d" "$@" > "$TMP/$tag.resume.out" 2> "$TMP/$tag.resume.err"; rc=$?
    [ $rc = 0 ] || { add_fail "resume exited $rc: $(grep -m1 . "$TMP/$tag.resume.err")"; return 1; }
    f=$(first_step "$TMP/$tag.resume.out")
    if [ "$c" -ge $STEPS ]; then
        grep -q finished "$TMP/$tag.resume.out" || add_fail "resume of the finished checkpoint-$c did not say finished"
    elif [ "${f:-none}" != $((c + 1)) ]; then
        add_fail "resume started at step ${f:-none}, but the newest complete checkpoint is checkpoint-$c"
    fi
}
report() { # report NAME: one line from $fail/$note/$survived
    N=$((N + 1)); [ "$survived" = 1 ] && M=$((M + 1))
    if [ -z "$fail" ]; then echo "PASS $1: $note"; else echo "FAIL $1: $fail"; FAILED=$((FAILED + 1)); fi
}

echo "fault tests: python3 mtgrpo.py ${ARGS[*]} (seed $SEED, $ROUNDS kill -9 rounds, temp dir $TMP)"
if ! python3 mtgrpo.py "${ARGS[@]}" --out-dir "$REF" > "$TMP/ref.out" 2> "$TMP/ref.err"; then
    echo "FAIL reference: the uninterrupted run failed: $(tail -n 3 "$TMP/ref.err")"; echo "0 run, 0 survived"; exit 1
fi
echo "reference run: $((SECONDS - T0)) s, newest checkpoint-$(newest "$REF")"

# --- 1: kill -9 -------------------------------------------------------------------------------------------------
python3 -c "
import random; r = random.Random($SEED)
for _ in range($ROUNDS): print(r.randint(1, $STEPS - 2), round(r.uniform(0, 0.5), 3))" > "$TMP/plan"
for r in $(seq 1 "$ROUNDS"); do
    read -r step delay < <(sed -n "${r}p" "$TMP/plan")
    fail="" note="" survived=0 tmpround=$(( r % 3 == 1 )) d=$TMP/kill-$r
    for attempt in 1 2 3; do  # a .tmp round retries if the kill landed just after the rename
        rm -rf "$d"
        eval "$(drive "{\"out_dir\": \"$d\", \"base\": \"$TMP/kill-$r\", \"step\": $step, \"delay\": $delay, \"tmp\": $([ $tmpround = 1 ] && echo true || echo false), \"signals\": [\"SIGKILL\"]}" "$d")"
        [ $tmpround = 0 ] || [ -n "$tmps" ] || [ "$sent" = 0 ] || continue
        break
    done
    c=$(newest "$d")
    if [ "$sent" = 0 ]; then
        add_fail "the run ended (exit $rc) before the kill"
    elif [ $tmpround = 1 ] && [ -z "$tmps" ]; then
        add_fail "3 tries, no checkpoint-*.tmp caught at the kill"
    fi
    where="killed after step $step_at_signal"
    [ $tmpround = 1 ] && where="killed during the write of $tmps" || where="$where +${delay}s"
    if [ -z "$c" ]; then
        add_fail "$where: no complete checkpoint to resume (steps logged: $last_step)"
    elif [ -z "$fail" ]; then
        [ $tmpround = 1 ] && [ "${tmps%%.tmp*}" != "checkpoint-$((c + SAVE_EVERY))" ] \
            && add_fail "$where but the newest complete checkpoint is checkpoint-$c"
        [ $((last_step - c)) -le $SAVE_EVERY ] || add_fail "$where: $((last_step - c)) steps lost (log at step $last_step, checkpoint-$c)"
        note="$where, resumed from checkpoint-$c (lost $((last_step - c)) finished step(s))"
        resume "$d" "$c" "kill-$r" && compare "$d"
    fi
    report "kill -9 round $r"
done

# --- 2, 3, 4: SIGINT, SIGTERM, SIGINT twice -----------------------------------------------------------------------
read -r s2 s3 s4 < <(python3 -c "import random; r = random.Random($SEED + 1); print(*(r.randint(2, $STEPS - 3) for _ in range(3)))")
for sig in SIGINT SIGTERM; do
    [ $sig = SIGINT ] && code=130 step=$s2 || code=143 step=$s3
    fail="" note="" survived=0 d=$TMP/$sig
    eval "$(drive "{\"out_dir\": \"$d\", \"base\": \"$d\", \"step\": $step, \"delay\": 0.1, \"signals\": [\"$sig\"]}" "$d")"
    c=$(newest "$d")
    [ "$rc" = $code ] || add_fail "exit status $rc, expected $code"
    tb=$(traceback "$d.err") && add_fail "$tb"
    named=$(grep -oE "checkpoint \S*checkpoint-[0-9]+" "$d.out" | tail -n 1); named=${named#checkpoint }
    if [ -z "$named" ]; then
        add_fail "no checkpoint named in the output"
    elif [ ! -f "$named/trainer_state.pt" ] || [ "${named##*-}" != "$c" ]; then
        add_fail "output names $named, newest complete checkpoint is checkpoint-${c:-none}"
    fi
    grep -q -- "--resume" "$d.out" || add_fail "no resume command in the output"
    [ -n "$c" ] && [ "$c" -ge "${step_at_signal:-0}" ] && [ "$c" = "$last_step" ] \
        || add_fail "signal after step $step_at_signal, log at step $last_step, checkpoint-${c:-none}: a step was lost"
    note="$sig after step $step_at_signal: exit $rc, saved checkpoint-$c"
    [ -n "$c" ] && resume "$d" "$c" "$sig" && compare "$d"
    report "$sig once"
done

fail="" note="" survived=0 d=$TMP/SIGINTx2
eval "$(drive "{\"out_dir\": \"$d\", \"base\": \"$d\", \"step\": $s4, \"delay\": 0.1, \"signals\": [\"SIGINT\", \"SIGINT\"], \"gap\": 0.05}" "$d")"
c=$(newest "$d")
[ "$sent" = 2 ] || add_fail "the run exited (status $rc) before the second SIGINT"
[ "$rc" = 130 ] || add_fail "exit status $rc, expected 130"
awk -v t="$exit_after" 'BEGIN { exit !(t != "" && t <= 2.0) }' || add_fail "exited ${exit_after}s after the second SIGINT"
tb=$(traceback "$d.err") && add_fail "$tb"
grep -q "stopped after" "$d.out" && add_fail "it finished the step and saved ($(grep -m1 "stopped after" "$d.out")) instead of quitting at once"
note="SIGINT x2 after step $step_at_signal: exit $rc ${exit_after}s after the second"
[ -n "$tmps" ] && note="$note, left $tmps"
if [ -z "$c" ]; then
    add_fail "no complete checkpoint was written before the exit (log at step $last_step)"
else
    note="$note, resumed from checkpoint-$c (log was at step $last_step)"
    resume "$d" "$c" SIGINTx2 && compare "$d"
fi
report "SIGINT twice"

# --- 5: damaged trainer_state.pt in the newest checkpoint -------------------------------------------------------
for how in truncated zero-byte; do
    fail="" note="" survived=0 d=$TMP/damaged-$how
    cp -a "$REF" "$d"
    c=$(newest "$d") f=$d/checkpoint-$c/trainer_state.pt
    [ $how = truncated ] && truncate -s $(( $(stat -c %s "$f") / 2 )) "$f" || : > "$f"
    for target in "$d/checkpoint-$c" "$d"; do
        python3 mtgrpo.py --resume "$target" > "$d.out" 2> "$d.err"; rc=$?
        older=$(grep -oE '/\S*checkpoint-[0-9]+' "$d.err" | grep -v "checkpoint-$c\$" | tail -n 1)
        if [ $rc != 2 ] || [ "$(grep -c . "$d.err")" != 1 ] || ! grep -q '^error:' "$d.err"; then
            add_fail "--resume ${target#$TMP/}: exit $rc, stderr $(grep -c . "$d.err") lines: $(head -c 300 "$d.err" | tr '\n' '|')"
        elif [ -z "$older" ] || [ ! -f "$older/trainer_state.pt" ] || [ "${older##*-}" -ge "$c" ]; then
            add_fail "--resume ${target#$TMP/}: the error names no older complete checkpoint: $(cat "$d.err")"
        fi
    done
    note="$how checkpoint-$c refused (exit 2, one error line naming ${older##*/})"
    if [ -z "$fail" ]; then  # the copy's saved config names the reference's --out-dir: point it here
        resume "$older" "${older##*-}" "damaged-$how" --out-dir "$d" && compare "$d"
    fi
    report "$how trainer_state.pt"
done

# --- 6: a used --out-dir --------------------------------------------------------------------------------------------
fail="" note="" survived=0 d=$TMP/reuse
cp -a "$REF" "$d"
sum() { (cd "$d" && find . -type f -exec md5sum {} + | sort | md5sum); }
before=$(sum)
python3 mtgrpo.py "${ARGS[@]}" --out-dir "$d" > "$d.out" 2> "$d.err"; rc=$?
if [ $rc != 2 ] || [ "$(grep -c . "$d.err")" != 1 ] || ! grep -q '^error:.*--resume.*--overwrite' "$d.err"; then
    add_fail "new run into a used dir: exit $rc, stderr: $(head -c 300 "$d.err" | tr '\n' '|')"
fi
[ "$(sum)" = "$before" ] || add_fail "the refused run changed the used dir"
python3 mtgrpo.py "${ARGS[@]}" --steps 4 --out-dir "$d" --overwrite > "$d.out" 2> "$d.err"; rc=$?
left=$(cd "$d" && ls -d checkpoint-* 2>/dev/null | tr '\n' ' ')
[ $rc = 0 ] || add_fail "--overwrite run exited $rc: $(grep -m1 . "$d.err")"
[ "$left" = "checkpoint-3 checkpoint-4 " ] || add_fail "after --overwrite --steps 4 the dir holds: $left"
[ "$(grep -c '"kind": "config"' "$d/log.jsonl")" = 1 ] && grep -q '"steps": 4' "$d/log.jsonl" \
    || add_fail "log.jsonl after --overwrite is not the new run's alone"
[ -z "$fail" ] && compare "$d" 4
before=$(sum)
python3 mtgrpo.py --resume "$d" > "$d.out" 2> "$d.err"; rc=$?
[ $rc = 0 ] && grep -q finished "$d.out" || add_fail "--resume of the finished run: exit $rc: $(cat "$d.out" "$d.err" | head -c 300)"
[ "$(sum)" = "$before" ] || add_fail "--resume of the finished run changed its dir"
note="refused (exit 2), --overwrite left only [${left% }], resume of the finished run exit $rc: ${note}"
[ -n "$fail" ] && survived=0
report "used --out-dir"

echo "total time $((SECONDS - T0)) s"
echo "$N run, $M survived"
[ $FAILED = 0 ]
