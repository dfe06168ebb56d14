"""Tests of the fidelity points (arXiv 2602.05547 and its released code): fp32 log-probs under bf16 autocast,
a ratio of exactly 1 at theta_t in any precision, Subroutine 2 as written, and each piece of the released
code's algorithm (--preset released) against hand-computed numbers. All on CPU."""

import functools
import math

import numpy as np
import pytest
import torch

import mtgrpo as M
import policy
import tasks
from models import build_tiny_model, load_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(build_tiny_model(str(tmp_path_factory.mktemp("tiny"))), torch.device("cpu"))


def _groups(tok, n_prompts: int, N: int, seed: int = 0) -> list:
    """Prompts of different lengths and responses that stop (EOS = 1) at different places, so that micro-batches
    cut elsewhere get other padding and other shared prompts."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for j in range(n_prompts):
        resp = torch.randint(2, 90, (N, 6), generator=g)
        for i in range(N):
            resp[i, 1 + (i + j) % 5] = 1  # the EOS
        rewards = torch.tensor([1.0 if i % 2 == j % 2 else 0.0 for i in range(N)])
        prompt = tok(f"copy {'abcdefgh'[:j + 1]}:")["input_ids"]
        groups.append(M.Group(j % 2, prompt, resp, policy.response_mask(resp, [1]), rewards))
    return groups


# -----------------------------------------------------------------------------
# fp32 log-probs under autocast


def test_token_logprobs_under_bf16_autocast_are_the_fp32_computation():
    """Under autocast the lm_head product and the log-softmax run in fp32: for given (bf16) hidden states the
    result equals the fp32 reference exactly, chunk by chunk. The bf16 product it replaces is off by far more
    at logits of magnitude ~25 (bf16 keeps 8 bits of mantissa: a step of 0.125 there)."""
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(3, 5, 64, generator=g) * 4).bfloat16()
    weight = torch.randn(300, 64, generator=g) * 0.8
    tokens = torch.randint(0, 300, (3, 5), generator=g)
    ref = torch.log_softmax(hidden.float() @ weight.T / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = policy.token_logprobs(hidden, weight, tokens, 0.7, chunk_size=4)
        old_way = torch.log_softmax((hidden @ weight.T.bfloat16()).float() / 0.7, -1)
    old_way = old_way.gather(-1, tokens[..., None]).squeeze(-1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-6)  # fp32 rounding of a sum of 64 terms
    assert (old_way - ref).abs().max() > 1e-2  # what the fp32 head removes


def test_policy_logprobs_under_bf16_autocast_stay_near_fp32(tiny):
    """The whole forward under CPU bf16 autocast against fp32: the body's bf16 rounding remains, the lm_head's
    is gone. Bound: 0.05 nat per token at most, 0.01 on average (bench/logprob_precision.py measures it)."""
    model, tok = tiny
    prompts = [tok("copy abc:")["input_ids"], tok("sum 3+4 kq:")["input_ids"]]
    resp = torch.randint(2, 90, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = policy.policy_logprobs(model, prompts, resp, tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = policy.policy_logprobs(model, prompts, resp, tok.pad_token_id)
    err = (ours - ref).abs()
    assert err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())


# -----------------------------------------------------------------------------
# The ratio at theta_t is exactly 1


def test_ratio_is_exactly_one_at_theta_t_under_bf16_autocast(tiny):
    """With the policy's lr at 0 every minibatch runs at theta_t. pi_old of minibatches 2.. and the I_k pass
    use the update's own micro-batch shapes, so under bf16 autocast each minibatch's forward equals its pi_old
    bit for bit (ratio exactly 1) and I_k is exactly 0. minibatch_size * N = 2 x 6 = 12 rows is not a multiple
    of the micro-batch size 5, so a pass over the concatenated minibatches would cut other micro-batches."""
    model, tok = tiny
    N = 6
    rows = M.flatten_groups(_groups(tok, 6, N), True, tok.pad_token_id)
    cfg = M.Config(minibatch_size=2, micro_batch_size=5)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hook = lambda mb, logp, old: seen.append((logp, old))  # noqa: E731
        _, old_logp = M.policy_update(logprobs, opt, rows, N, cfg, hook)
        improvement = M.objective_change(logprobs, rows, old_logp, 2, N, cfg)
    assert len(seen) == 3
    for logp, old in seen:
        assert torch.equal(logp, old)
    assert improvement.tolist() == [0.0, 0.0]


# -----------------------------------------------------------------------------
# Subroutine 2 as written


def test_subroutine2_sgd_steps_hand_computed():
    """xi <- xi - beta (g + eta xi), g_k = z_k (J_k - z.J), no lambda; beta 1, eta 0.1, J = (0.2, 0.6).
    step 1: z = (.5, .5), z.J = 0.4, g = (-0.1, 0.1), xi_1 = (0.1, -0.1);
    step 2: z = softmax(0.1, -0.1) = (0.549834, 0.450166), z.J = 0.380067,
            g + eta xi = (0.549834 (0.2 - 0.380067) + 0.01, 0.450166 (0.6 - 0.380067) - 0.01),
            xi_2 = xi_1 - that = (0.189006, -0.189006)."""
    xi = torch.zeros(2, requires_grad=True)
    opt = M.xi_optimizer(xi, "sgd", 1.0, 0.0, "reward_l2", eta=0.1)
    J = torch.tensor([0.2, 0.6])
    M.update_task_weights(xi, opt, torch.zeros(2), J, "reward_l2", lam=5.0)  # lam must not enter
    assert xi.detach().tolist() == pytest.approx([0.1, -0.1], abs=1e-7)
    M.update_task_weights(xi, opt, torch.zeros(2), J, "reward_l2", lam=5.0)
    z0 = math.exp(0.1) / (math.exp(0.1) + math.exp(-0.1))
    zj = z0 * 0.2 + (1 - z0) * 0.6
    expect = [0.1 - (z0 * (0.2 - zj) + 0.01), -0.1 - ((1 - z0) * (0.6 - zj) - 0.01)]
    assert xi.detach().tolist() == pytest.approx(expect, abs=1e-6)
    assert expect[0] == pytest.approx(0.189006, abs=1e-6)


# -----------------------------------------------------------------------------
# The released code's algorithm, piece by piece


def test_released_preset_sets_its_five_points():
    cfg = M.parse_args(["--preset", "released"])
    assert (cfg.iwu_every, cfg.improvement_agg, cfg.xi_optimizer, cfg.accuracy_decay, cfg.prompt_pools,
            cfg.inflate) == ("minibatch", "sum", "adam", 0.5, True, False)
    assert cfg.lr == M.PRESETS["tiny"]["lr"]  # --model tiny still gets the testbed preset under it
    exp1 = M.parse_args(["--model", "Qwen/Qwen2.5-3B", "--preset", "exp1,released", "--inflate"])
    assert (exp1.num_rollouts, exp1.iwu_every, exp1.inflate) == (72, "minibatch", True)  # explicit flags win


def test_prompt_pools_draw_without_replacement_across_steps_and_refill():
    """A pool of task 0 (5 prompts), refilled when fewer than 3 remain: draws of 2, 2, 2 take the first
    permutation's 0-1, 2-3, then the refill appends a second permutation to the 1 left and 2 are drawn."""
    rng = np.random.default_rng(7)
    ref = np.random.default_rng(7)
    first = ref.permutation(5).tolist()
    second = ref.permutation(5).tolist()
    pools = [[]]
    draw = tasks.pool_draws(rng, pools, refill_below=3)
    assert draw(0, 2, 5) == first[:2]
    assert draw(0, 2, 5) == first[2:4]                     # 3 left: no refill
    assert draw(0, 2, 5) == [first[4], second[0]]          # 1 left < 3: the rest, then a reshuffled full list
    assert pools == [second[1:]]
    step = tasks.step_draws(np.random.default_rng(7), 1)       # the default: a new step forgets its draws
    assert sorted(step(0, 5, 5)) == [0, 1, 2, 3, 4]


def test_prompt_draws_takes_the_pools_only_when_there_are_pools():
    """Both trainers get a step's draw from tasks.prompt_draws: with pools (--prompt-pools) it takes each pool's
    front and keeps the rest for the next step; without, it is step_draws (every prompt once within the step)."""
    pools = [[4, 2, 0, 1, 3]]
    draw = tasks.prompt_draws(np.random.default_rng(0), 1, pools, refill_below=1)
    assert draw(0, 2, 5) == [4, 2] and pools == [[0, 1, 3]]
    draw = tasks.prompt_draws(np.random.default_rng(0), 1, None, refill_below=1)
    assert sorted(draw(0, 3, 5) + draw(0, 2, 5)) == [0, 1, 2, 3, 4]


def _batch_with_rounds(rounds: list[tuple[list[float], list[float]]]) -> M.SampledBatch:
    batch = M.SampledBatch([], [], [], np.zeros(2))
    batch.stats = [dict(correct=np.array(c), total=np.array(t), reward=0.0, tokens=0, seconds=0.0)
                   for c, t in rounds]
    return batch


def test_accuracy_is_this_steps_rollouts_or_an_ema_per_round():
    """Rounds: (correct 2 of 4, task 1 absent), then (1 of 2, 3 of 4). Paper (decay 0): J = the step's totals,
    (3/6, 3/4). Released (decay 0.5, from 0): round 1 J_0 = 0.5 * 0 + 0.5 * 0.5 = 0.25 (task 1 unchanged),
    round 2 J = (0.5 * 0.25 + 0.5 * 0.5, 0.5 * 0 + 0.5 * 0.75) = (0.375, 0.375)."""
    batch = _batch_with_rounds([([2.0, 0.0], [4.0, 0.0]), ([1.0, 3.0], [2.0, 4.0])])
    # decay 0.75 (asymmetric, so d and 1 - d cannot trade places): round 1 J_0 = 0.25 * 0.5 = 0.125;
    # round 2 J = (0.75 * 0.125 + 0.25 * 0.5, 0.25 * 0.75) = (0.21875, 0.1875)
    for decay, expect in ((0.0, [0.5, 0.75]), (0.5, [0.375, 0.375]), (0.75, [0.21875, 0.1875])):
        cfg = M.Config(accuracy_decay=decay)
        state = M.start_state(2, cfg, 0)
        M.update_accuracy(cfg, state, batch)
        assert state.J.tolist() == pytest.approx(expect)


def test_accuracy_counts_every_rollout_not_only_the_trained_groups():
    """J_k is the accuracy of all of the step's rollouts before the filter: 1 of 8 here, although the one
    group that survived (and is trained on) has 1 of 2 correct."""
    batch = _batch_with_rounds([([1.0, 0.0], [8.0, 0.0])])
    response = torch.zeros(2, 1, dtype=torch.long)
    batch.groups = [M.Group(0, [3], response, torch.ones(2, 1), torch.tensor([1.0, 0.0]))]
    batch.tasks = [0]
    cfg = M.Config()
    state = M.start_state(2, cfg, 0)
    M.update_accuracy(cfg, state, batch)
    assert state.J.tolist() == [0.125, 0.0]


def test_minibatch_iwu_hand_computed():
    """The released IWU step after a minibatch: two task-0 responses of 2 tokens, A = (1, -1), pi_old = 1.
    Before (its training forward): ratio 1, per-response means (1, -1), summed: 0. After: ratios 1.1 and 0.9,
    surrogates min(r A, clip(r) A) = (1.1, -0.9), summed: 0.2; c = 1 keeps I = (0.2, 0).
    With J = 0, z = (.5, .5): s = I, g = z (s - z.s) = (0.05, -0.05); Adam's first step is -lr sign(g):
    xi = (-0.025, 0.025)."""
    responses = torch.zeros(2, 2, dtype=torch.long)
    rows = M.Rows([[5], [5]], responses, torch.ones(2, 2), torch.tensor([1.0, -1.0]), torch.tensor([0, 0]))
    new = torch.log(torch.tensor([[1.1, 1.1], [0.9, 0.9]]))
    cfg = M.Config(improvement_agg="sum", improvement_clip=1.0, xi_optimizer="adam", xi_lr=0.025,
                   xi_weight_decay=0.0, lam=0.2)
    state = M.start_state(2, cfg, 0)
    total = torch.zeros(2)
    hook = M.minibatch_iwu(lambda prompts, responses: new, rows, 2, cfg, state, total)
    hook([0, 1], torch.zeros(2, 2), torch.zeros(2, 2))
    assert total.tolist() == pytest.approx([0.2, 0.0], abs=1e-6)
    assert state.xi.detach().tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)


def test_xi_adam_is_coupled_l2_as_the_released_code():
    """torch.optim.Adam's weight decay is added to the gradient (coupled L2; the released code's xi
    optimizer), AdamW's is applied to the weight. From xi = (1, 0), g = (-0.01, 0), decay 0.1, lr 0.1: Adam
    sees g + 0.1 xi = (0.09, 0), steps -lr sign: xi_0 = 0.9; AdamW steps +lr and decays:
    1 (1 - 0.01) + 0.1 = 1.09."""
    for kind, expect in (("adam", 0.9), ("adamw", 1.09)):
        xi = torch.tensor([1.0, 0.0], requires_grad=True)
        opt = M.xi_optimizer(xi, kind, 0.1, 0.1, "iwu", 0.0)
        xi.grad = torch.tensor([-0.01, 0.0])
        opt.step()
        assert xi[0].item() == pytest.approx(expect, abs=1e-6), kind


# -----------------------------------------------------------------------------
# Bugs the suite used to miss


def test_improvement_is_positive_when_the_update_ascends_the_objective(tiny):
    """Eq. 8's sign: one small SGD step on a single minibatch ascends its token-mean surrogate, so I_k > 0 for
    both tasks (first order: lr |grad|^2 > 0); I_k = J(theta_t) - J(theta_t+1) would be negative."""
    model, tok = tiny
    N = 4
    rows = M.flatten_groups(_groups(tok, 4, N, seed=3), True, tok.pad_token_id)
    cfg = M.Config(minibatch_size=4, micro_batch_size=16, improvement_clip=10.0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        logprobs = functools.partial(policy.policy_logprobs, model, pad_id=tok.pad_token_id)
        _, old_logp = M.policy_update(logprobs, torch.optim.SGD(model.parameters(), lr=0.5), rows, N, cfg)
        improvement = M.objective_change(logprobs, rows, old_logp, 2, N, cfg)
    finally:
        model.load_state_dict(saved)
    assert (improvement > 0).all(), improvement


def test_released_iwu_passes_over_as_many_rows_as_the_per_step_pass(tiny):
    """The released code's per-minibatch I_k costs one no-grad pass over each minibatch's rows after its
    update: as many rows in all as the default's one I_k pass after the last update (plus, in both, pi_old for
    minibatches 2..). Counted at the log-prob function: 6 groups x N = 4 in minibatches of 2 groups."""
    model, tok = tiny
    N = 4
    rows = M.flatten_groups(_groups(tok, 6, N, seed=5), True, tok.pad_token_id)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    counted = {}
    try:
        for every in ("step", "minibatch"):
            cfg = M.Config(minibatch_size=2, micro_batch_size=8, iwu_every=every, improvement_agg="sum")
            state = M.start_state(2, cfg, 0)
            seen = []

            def logprobs(prompts, responses):
                if not torch.is_grad_enabled():
                    seen.append(len(prompts))
                return policy.policy_logprobs(model, prompts, responses, tok.pad_token_id)

            hook = None
            if every == "minibatch":
                hook = M.minibatch_iwu(logprobs, rows, 2, cfg, state, torch.zeros(2))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            _, old_logp = M.policy_update(logprobs, opt, rows, N, cfg, hook)
            if every == "step":
                M.objective_change(logprobs, rows, old_logp, 2, N, cfg)
            counted[every] = sum(seen)
            model.load_state_dict(saved)
    finally:
        model.load_state_dict(saved)
    assert counted["step"] == counted["minibatch"] == 16 + 24  # pi_old of minibatches 2-3; every row once
