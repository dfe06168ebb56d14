"""How one MT-GRPO step of our trainer scales on CPU: step time versus the rollouts per prompt N
(4, 8, 16; responses of 64 tokens) and versus the response length T (64, 128, 256; N = 8).

The step is the trainer's own phases in Algorithm 1 order, on the tiny Qwen2 of `models.build_tiny_model`:
task weights z -> RP sampler (Algorithm 2: `policy.generate` + scoring + strict filter) -> old
log-probs -> minibatch GRPO updates -> I_k pass (`policy_update`, `objective_change`) -> IWU (`update_task_weights`).
B = 8 prompts ("Solve: a+b=" with 3 task labels), Config defaults otherwise: M_os = 3, so a round
generates 24 prompts x N rollouts and the sampler trims the survivors to B; minibatches of 4 prompts
(two updates); micro-batches of 8 rows. Lengths are fixed as in workload W1 (bench/README.md): <pad> and
EOS are suppressed (bench/common.py). A random model never earns a reward, so each group gets random 0/1
rewards with at least one of each: every group survives the filter, and a second round happens only when
a task drew fewer prompts than its target.

    python3 bench/scaling.py                 # --steps 4 (first is warm-up) --threads 2

Prints a markdown table (medians over the timed steps) under the command and the CPU model.
"""

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402
from common import suppress_tokens  # noqa: E402
from models import build_tiny_model, load_model  # noqa: E402
from trl_peer import w1_prompts  # noqa: E402

B, K = 8, 3  # prompts per step, task labels


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "unknown")


def time_steps(model, tok, N: int, T: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Median seconds of one MT-GRPO step (and its generate / update parts) over steps 2..steps."""
    cfg = M.Config(batch_size=B, num_rollouts=N, max_response_len=T, lr=1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    xi = torch.zeros(K, requires_grad=True)
    xi_opt = torch.optim.AdamW([xi], lr=cfg.xi_lr, weight_decay=cfg.xi_weight_decay)
    rng, rho, J = np.random.default_rng(seed), np.zeros(K), torch.zeros(K)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=tok.pad_token_id, temperature=cfg.temperature)
    pool = [tok(p, add_special_tokens=False)["input_ids"] for p in w1_prompts(1000)]
    suppress = [tok.pad_token_id, tok.eos_token_id]  # fixed lengths: every response is T tokens
    out = []
    for step in range(steps):
        gen_s = 0.0

        def sample_round(counts: np.ndarray) -> tuple[list[list[M.Group]], None]:
            nonlocal gen_s
            t = time.perf_counter()
            ids = [pool[i] for i in rng.choice(len(pool), int(counts.sum()), replace=False)]
            with suppress_tokens(model, suppress):
                outs = policy.generate(model, ids, N, max_new_tokens=T, pad_id=tok.pad_token_id, eos_ids=[tok.eos_token_id],
                                  temperature=cfg.temperature, top_p=cfg.top_p, gen_batch_size=cfg.gen_batch_size)
            gen_s += time.perf_counter() - t
            groups: list[list[M.Group]] = [[] for _ in range(K)]
            for k, p, (resp, mask) in zip(np.repeat(np.arange(K), counts), ids, outs):
                r = torch.from_numpy(rng.permutation([1.0, 0.0] + list(rng.integers(0, 2, N - 2)))).float()
                if M.zero_gradient_keep(r[None], "strict")[0]:
                    groups[k].append(M.Group(int(k), p, resp, mask, r))
            return groups, None

        t0 = time.perf_counter()
        z = M.task_weights("iwu", xi, np.zeros(K), cfg.sec_temperature)
        batch = M.rp_sample(z, B, sample_round, rho, rng, cfg.os_factor, cfg.max_resample_rounds, cfg.acc_cap,
                            cfg.rho_decay, cfg.inflate)
        rho = batch.rho
        rows = M.flatten_groups(batch.groups, cfg.adv_std == "unbiased", tok.pad_token_id)
        upd, old_logp = M.policy_update(logprobs, opt, rows, N, cfg)
        t_imp = time.perf_counter()
        improvement = M.objective_change(logprobs, rows, old_logp, K, N, cfg)
        upd["seconds_improvement"] = time.perf_counter() - t_imp
        M.update_task_weights(xi, xi_opt, improvement, J, "iwu", cfg.lam)
        total = time.perf_counter() - t0
        assert len(batch.groups) == B
        prompts_generated = sum(map(sum, batch.generated))
        out.append((total, gen_s, upd["seconds_old_logp"] + upd["seconds_update"] + upd["seconds_improvement"],
                    batch.rounds, prompts_generated * N * T / gen_s))
    med = [statistics.median(x[i] for x in out[1:]) for i in range(5)]
    return dict(zip(("step", "gen", "update", "rounds", "gen_tok_s"), med))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per setting; the first is warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        model, tok = load_model(build_tiny_model(d), torch.device("cpu"))
    settings = [(4, 64), (8, 64), (16, 64), (8, 128), (8, 256)]  # (N, T)
    print(f"`python3 bench/{os.path.basename(sys.argv[0])} {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"B = {B} prompts, medians over {a.steps - 1} steps after 1 warm-up\n")
    print("| N | T | rows trained | rounds | s/step | generate s | update s (old logp + updates + I_k) | generated tok/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for N, T in settings:
        r = time_steps(model, tok, N, T, a.steps)
        print(f"| {N} | {T} | {B * N} | {r['rounds']:g} | {r['step']:.3f} | {r['gen']:.3f} | {r['update']:.3f} | {r['gen_tok_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
