"""Tests for mtgrpo.py: every piece of the method against hand-computed values or derived statistics,
then the trainer end to end on the tiny model. All on CPU. Run: python -m pytest -q"""

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import mtgrpo as M
import policy
import support
import tasks
from bench.metrics import average_relative_change, steps_to_threshold
from models import build_tiny_model, left_pad, load_model


# -----------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return load_model(tiny_dir, torch.device("cpu"))


# -----------------------------------------------------------------------------
# Eq. 11: group advantages


def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1]])
    # mean 0.25; population var 3/16 -> std 0.4330; sample var 0.25 -> std 0.5
    a = M.group_advantages(r, unbiased=True)
    assert torch.allclose(a[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))
    assert torch.equal(a[1], torch.zeros(4))  # constant group: no signal
    a = M.group_advantages(r, unbiased=False)
    assert torch.allclose(a[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (math.sqrt(3) / 4 + 1e-6))


def test_group_advantages_rejects_single_rollout():
    with pytest.raises(ValueError, match="N >= 2"):
        M.group_advantages(torch.ones(3, 1))


# -----------------------------------------------------------------------------
# Zero-gradient filter


def test_filters_hand_computed():
    r = torch.tensor([[1.0, 0.0],    # mixed: kept by both
                      [1.0, 1.0],    # all correct: dropped by both
                      [0.0, 0.0],    # all wrong: dropped by both
                      [0.1, 0.0],    # no correct but varied: strict drops, lenient keeps
                      [0.1, 0.1],    # constant format credit: both drop (the released lenient mode keeps it)
                      [1.0, 0.1]])   # one correct: both keep
    assert M.zero_gradient_keep(r, "strict").tolist() == [True, False, False, False, False, True]
    assert M.zero_gradient_keep(r, "lenient").tolist() == [True, False, False, True, False, True]
    assert M.zero_gradient_keep(r, "none").all()
    with pytest.raises(ValueError, match="filter mode"):
        M.zero_gradient_keep(r, "loose")


def test_response_mask_includes_first_eos_even_when_pad_is_eos():
    eos = 1
    tokens = torch.tensor([[5, 6, eos, eos, eos],   # pad == eos after the first EOS
                           [5, 6, 7, 8, 9],         # truncated: every token counts
                           [eos, 7, eos, 0, 0]])
    m = policy.response_mask(tokens, [eos])
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert policy.response_mask(torch.tensor([[5, 9, 7]]), [1, 9]).tolist() == [[1, 1, 0]]  # several EOS ids


# -----------------------------------------------------------------------------
# Token log-probs: chunked selective log-softmax == naive log_softmax + gather


@pytest.mark.parametrize("chunk,temperature", [(1, 1.0), (7, 0.7), (4096, 1.3)])
def test_token_logprobs_equal_naive(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (3, 5), generator=g)
    fast = policy.token_logprobs(h, w, y, temperature, chunk_size=chunk)
    naive = torch.log_softmax((h @ w.T) / temperature, dim=-1).gather(-1, y[..., None]).squeeze(-1)
    assert torch.allclose(fast, naive, atol=1e-12)
    gf = torch.autograd.grad(fast.sum(), (h, w))
    gn = torch.autograd.grad(naive.sum(), (h, w))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(gf, gn))


# -----------------------------------------------------------------------------
# Eq. 13: clipped surrogate and the GRPO loss


def test_clipped_surrogate_each_side_each_sign():
    eps_low, eps_high = 0.2, 0.28
    ratios = torch.tensor([0.5, 1.1, 1.5])           # below 1-eps_low, inside, above 1+eps_high
    old = torch.zeros(1, 3)
    logp = torch.log(ratios)[None]
    pos = M.clipped_surrogate(logp, old, torch.tensor([2.0]), eps_low, eps_high)
    neg = M.clipped_surrogate(logp, old, torch.tensor([-2.0]), eps_low, eps_high)
    # A > 0: min(rA, clip(r)A) -> r below: 0.5*2 = 1.0 (unclipped, min); inside 2.2; above clipped 1.28*2
    assert torch.allclose(pos, torch.tensor([[1.0, 2.2, 2.56]]))
    # A < 0: below -> clipped to 0.8*-2 = -1.6; inside -2.2; above -3.0 (unclipped, min)
    assert torch.allclose(neg, torch.tensor([[-1.6, -2.2, -3.0]]))


def test_grpo_loss_token_and_seq_mean_hand_computed():
    logp = torch.log(torch.tensor([[1.1, 1.5, 1.0], [0.5, 1.0, 1.0]]))
    old = torch.zeros(2, 3)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # terms: row 0: 2.2, 2.56 (clipped); row 1: r=0.5, A<0 -> clip to 0.8 -> -0.8
    loss, st = M.grpo_loss(logp, old, adv, mask, 0.2, 0.28, agg="token_mean")
    assert loss.item() == pytest.approx(-(2.2 + 2.56 - 0.8) / 3)
    assert float(st["clip_frac"]) == pytest.approx(2 / 3)
    loss, _ = M.grpo_loss(logp, old, adv, mask, 0.2, 0.28, agg="seq_mean")
    assert loss.item() == pytest.approx(-(((2.2 + 2.56) / 2) + (-0.8)) / 2)


def test_grpo_loss_gradient_sign():
    """Ascending J_GRPO must raise the log-prob of a positive-advantage token: d loss / d logp < 0."""
    logp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = M.grpo_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    loss.backward()
    assert logp.grad.item() < 0


def test_grpo_loss_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))


def _rows(tokenizer, n_rows=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, 90, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n_rows)]
    responses = torch.randint(2, 90, (n_rows, 7), generator=g)
    responses[0, 2] = tokenizer.eos_token_id      # an early EOS: the rest of that row is masked
    mask = policy.response_mask(responses, [tokenizer.eos_token_id])
    adv = torch.randn(n_rows, generator=g)
    return M.Rows(prompts, responses, mask, adv, torch.zeros(n_rows, dtype=torch.long))


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_micro_batches_give_the_full_batch_gradient(tiny, agg):
    model, tok = tiny
    rows = _rows(tok)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=tok.pad_token_id)
    old = policy.batch_logprobs(logprobs, rows, list(range(6)), 6) - 0.05

    def grads(micro):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights alone
        seen = []  # the gradients as the optimizer step sees them (grpo_update frees them right after)
        opt.register_step_pre_hook(lambda o, args, kw: seen.extend(p.grad.clone() for p in model.parameters()))
        M.grpo_update(logprobs, opt, rows, list(range(6)), old, micro_batch_size=micro, loss_agg=agg)
        assert all(p.grad is None for p in model.parameters())  # freed after the step
        return seen

    full, split = grads(6), grads(4)  # 4 + 2 rows: unequal micro-batches, unequal token counts
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(full, split))
    assert any(a.abs().max() > 0 for a in full)


def test_policy_logprobs_match_generate_scores(tiny):
    """Recomputed log-probs (left padding, position ids, temperature) equal the sampler's own."""
    model, tok = tiny
    prompts = [tok("copy abc:")["input_ids"], tok("sum 3+4 kq:")["input_ids"]]
    ids, att = left_pad(prompts, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                             max_new_tokens=5, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id, eos_token_id=[tok.eos_token_id])
        resp = out.sequences[:, ids.shape[1]:]
        ref = torch.stack([torch.log_softmax(l.float() / 0.7, -1) for l in out.logits], 1).gather(-1, resp[..., None]).squeeze(-1)
        ours = policy.policy_logprobs(model, prompts, resp, tok.pad_token_id, 0.7)
    mask = policy.response_mask(resp, [tok.eos_token_id]).bool()
    assert torch.allclose(ours[mask], ref[mask], atol=1e-5)


def _logprobs_and_grads(model, prompts, resp, pad_id, share):
    model.zero_grad(set_to_none=True)
    lp = policy.policy_logprobs(model, prompts, resp, pad_id, 0.7, share_prompts=share)
    (lp * torch.linspace(-1, 1, lp.numel()).reshape(lp.shape)).sum().backward()  # a loss that weighs every token
    return lp.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("T", [1, 6])
def test_shared_prompt_forward_equals_row_by_row(tiny_dir, T):
    """Running each distinct prompt once and sharing its KV cache (rows of two groups of unequal prompt
    length, one group cut by the micro-batch edge) gives the row-by-row log-probs and gradients."""
    model, tok = load_model(tiny_dir, torch.device("cpu"))
    a, b = tok("copy abcdef:")["input_ids"], tok("sum 3+4:")["input_ids"]
    prompts = [a, a, a, b, b]
    resp = torch.randint(2, 60, (5, T), generator=torch.Generator().manual_seed(0))
    lp_row, g_row = _logprobs_and_grads(model, prompts, resp, tok.pad_token_id, share=False)
    lp_shared, g_shared = _logprobs_and_grads(model, prompts, resp, tok.pad_token_id, share=True)
    assert torch.allclose(lp_shared, lp_row, atol=1e-5)
    for gs, gr in zip(g_shared, g_row):
        assert torch.allclose(gs, gr, atol=1e-6, rtol=1e-4)


def test_shared_prompt_forward_under_gradient_checkpointing(tiny_dir):
    """HF drops the KV cache of checkpointed layers in train mode: the shared path must not be taken
    there (the responses would lose their prompt), with or without gradients."""
    plain, tok = load_model(tiny_dir, torch.device("cpu"))
    ckpt, _ = load_model(tiny_dir, torch.device("cpu"), grad_checkpointing=True)
    a = tok("copy abcdef:")["input_ids"]
    resp = torch.randint(2, 60, (3, 5), generator=torch.Generator().manual_seed(1))
    lp_ref, g_ref = _logprobs_and_grads(plain, [a] * 3, resp, tok.pad_token_id, share=False)
    lp, g = _logprobs_and_grads(ckpt, [a] * 3, resp, tok.pad_token_id, share=True)
    assert torch.allclose(lp, lp_ref, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-6, rtol=1e-4) for x, y in zip(g, g_ref))
    with torch.no_grad():
        assert torch.allclose(policy.policy_logprobs(ckpt, [a] * 3, resp, tok.pad_token_id, 0.7), lp_ref, atol=1e-5)


def test_generate_ignores_the_models_own_sampling_settings(tiny):
    """generate() would fill unset fields from model.generation_config (an instruct model's
    repetition_penalty, top_k...). Here the model's config suppresses ids 2..59; sampling at temperature
    1 from a near-uniform tiny model must still produce them: P(none in 128 draws) ~ (38/97)^128."""
    from transformers import GenerationConfig

    model, tok = tiny
    saved = model.generation_config
    own = GenerationConfig(suppress_tokens=list(range(2, 60)), top_k=1, pad_token_id=0, eos_token_id=1)
    model.generation_config = own
    try:
        torch.manual_seed(0)
        outs = policy.generate(model, [tok("copy: abc")["input_ids"]] * 2, 8, max_new_tokens=8, pad_id=0, eos_ids=[1])
        assert model.generation_config is own  # the model's own config is back after the call
    finally:
        model.generation_config = saved
    tokens = torch.cat([r for r, _ in outs])
    assert ((tokens >= 2) & (tokens < 60)).any()


@pytest.mark.parametrize("texts,n", [(["copy abcdef:", "sum 3+4:"], 3), (["a", "copy abc:"], 3), (["a", "b"], 3),
                                     (["copy abcdef:", "sum 3+4:"], 1)])
def test_generate_shared_prefill_samples_what_plain_generate_samples(tiny_dir, texts, n):
    """Prefilling each prompt once and sharing its cache over its n rows draws the same tokens as HF
    generate() with num_return_sequences (same seed, same logits up to float error), unequal prompt
    lengths included (a one-token prompt beside a longer one has only padding to prefill); one-token
    prompts alone, or n = 1, have nothing to share. The weights are scaled up so that the next-token
    distributions are peaked: near-uniform ones would hide a wrong prefix."""
    model, tok = load_model(tiny_dir, torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    prompts = [tok(t)["input_ids"] for t in texts]
    ids, att = left_pad(prompts, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=att, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                             num_return_sequences=n, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                             eos_token_id=[tok.eos_token_id])[:, ids.shape[1]:]
    torch.manual_seed(0)
    outs = policy.generate(model, prompts, n, max_new_tokens=12, pad_id=tok.pad_token_id, eos_ids=[tok.eos_token_id],
                      gen_batch_size=6)
    T = max(r.shape[1] for r, _ in outs)
    ours = torch.cat([torch.nn.functional.pad(r, (0, T - r.shape[1]), value=tok.pad_token_id) for r, _ in outs])
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("n", [1, 3])  # n = 1: generate() starts from an empty kv_cache; n = 3: from the shared prefill
def test_kv_cache_under_bf16_autocast_holds_bf16_keys_and_changes_nothing(tiny, monkeypatch, n):
    """Under bf16 autocast RoPE's fp32 cos/sin make the keys fp32 while the values are bf16: HF's own cache then holds
    1.5x the bytes. The cache generate() fills must hold bf16 keys, i.e. exactly rows x tokens x layers x 2 (K, V) x
    kv_heads x head_dim x 2 bytes, and a forward through it must give the logits HF's own cache gives, bit for bit
    (attention casts K to bf16 either way)."""
    from transformers import DynamicCache

    model, tok = tiny
    cfg, prompts, new_tokens = model.config, [tok("copy: abcdef")["input_ids"], tok("sum 3+4:")["input_ids"]], 5
    filled = []
    plain_prefill = policy.shared_prefill
    monkeypatch.setattr(policy, "shared_prefill", lambda *a: filled.append(plain_prefill(*a)) or filled[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        outs = policy.generate(model, prompts, n, max_new_tokens=new_tokens, pad_id=0, eos_ids=[-1])  # -1: never stops
    cache = next(iter(filled[0].values()))
    rows, tokens = len(prompts) * n, max(map(len, prompts)) + new_tokens - 1  # the last sampled token is never fed back
    assert all(r.shape[1] == new_tokens for r, _ in outs)
    assert {layer.keys.dtype for layer in cache.layers} == {layer.values.dtype for layer in cache.layers} == {torch.bfloat16}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes == rows * tokens * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 2

    ids, att = left_pad(prompts, 0)
    logits = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for cache in (DynamicCache(config=cfg), policy.kv_cache(model)):
            model(input_ids=ids, attention_mask=att, use_cache=True, **{policy.cache_kwarg(type(model)): cache})
            logits.append(model(input_ids=ids[:, -1:], attention_mask=torch.cat([att, att[:, -1:]], 1), use_cache=True,
                                **{policy.cache_kwarg(type(model)): cache}).logits)
            assert cache.layers[0].keys.dtype == (torch.float32 if len(logits) == 1 else torch.bfloat16)
    assert torch.equal(logits[0], logits[1])


# -----------------------------------------------------------------------------
# Eq. 8: per-task objective and improvement


def test_task_objectives_and_improvement_hand_computed():
    surrogate = torch.tensor([[1.0, 3.0], [2.0, 0.0], [5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    task = torch.tensor([0, 0, 2])
    j = M.task_objectives(surrogate, mask, task, K=3)
    assert j.tolist() == [2.0, 0.0, 5.0]  # task 0: (1+3+2)/3 tokens; task 1 absent -> 0
    i = M.task_improvement(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.05, -0.3, 0.2]), clip=0.1)
    assert torch.allclose(i, torch.tensor([0.05, -0.1, 0.1]))


def test_task_objectives_sum_over_responses():
    """--improvement-agg sum (the released code's scale): each response's token mean, summed over the task's responses.
    Task 0: rows (1+3)/2 = 2 and 2/1 = 2 -> 4; task 2: (5+5)/2 = 5."""
    surrogate = torch.tensor([[1.0, 3.0], [2.0, 0.0], [5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    assert M.task_objectives(surrogate, mask, torch.tensor([0, 0, 2]), K=3, agg="sum").tolist() == [4.0, 0.0, 5.0]


def test_sec_values_decay_for_a_task_left_out():
    q = M.update_sec_values(np.array([0.5, 0.4]), torch.tensor([1.0, -1.0]), torch.tensor([0, 0]), decay=0.5)
    assert q == pytest.approx([0.5 * 0.5 + 0.5 * 1.0, 0.5 * 0.4])  # task 1 was not in the batch: it decays


def test_a_steps_rounds_draw_prompts_without_replacement():
    """Within one step (one step_draws), no prompt of a task is drawn twice while unused ones remain; a round that wants
    more than remain draws from all of them again."""
    seen = []
    sample = lambda prompts, n: [seen.append(p) or (torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1)) for p in prompts]  # noqa: E731
    score = lambda examples, outs: [torch.tensor([1.0, 0.0]) for _ in outs]  # noqa: E731
    data = [(list(range(5)), [[i] for i in range(5)])]
    draw = tasks.step_draws(np.random.default_rng(0), 1)
    for count in (3, 2):
        M.rollout_round(np.array([count]), data, sample, score, 2, "strict", draw)
    assert sorted(p[0] for p in seen) == [0, 1, 2, 3, 4]
    survivors, stats = M.rollout_round(np.array([4]), data, sample, score, 2, "strict", draw)
    assert len(seen) == 9 and stats["total"].tolist() == [8.0] and len(survivors[0]) == 4


# -----------------------------------------------------------------------------
# Subroutine 1 (IWU) and Subroutine 2


def test_iwu_one_sgd_step_hand_computed():
    xi = torch.zeros(3, requires_grad=True)
    z = torch.softmax(xi.detach(), 0)
    I, J = torch.tensor([0.1, 0.0, -0.1]), torch.tensor([0.5, 0.2, 0.8])
    g = M.iwu_gradient(z, I, J, lam=0.5)
    # s = I + 0.5 J = [0.35, 0.10, 0.30]; z.s = 0.25; g = (1/3)(s - 0.25) = [0.1, -0.15, 0.05]/3
    assert torch.allclose(g, torch.tensor([0.1, -0.15, 0.05]) / 3)
    opt = torch.optim.SGD([xi], lr=2.0)
    xi.grad = g
    opt.step()
    assert torch.allclose(xi.detach(), -2.0 * torch.tensor([0.1, -0.15, 0.05]) / 3)
    assert torch.softmax(xi.detach(), 0).argmax() == 1  # lowest s (low reward, no improvement) gains most


def test_iwu_centres_on_the_z_weighted_mean():
    """g_k = z_k (s_k - sum_j z_j s_j): the mean is z-weighted, which only shows once z is not uniform.
    z = (.5, .3, .2), s = J = (.2, .5, .8): z.s = .41, g = (.5 (-.21), .3 (.09), .2 (.39)) = (-.105, .027, .078);
    an unweighted mean (.5) would give (-.15, 0, .06)."""
    g = M.iwu_gradient(torch.tensor([0.5, 0.3, 0.2]), torch.zeros(3), torch.tensor([0.2, 0.5, 0.8]), lam=1.0)
    assert torch.allclose(g, torch.tensor([-0.105, 0.027, 0.078]))
    assert abs(float(g @ torch.ones(3)) - 0.0) < 1e-7  # sum_k g_k = sum z s - (sum z) z.s = 0: xi's sum is kept


def test_subroutine2_one_step_hand_computed():
    xi = torch.tensor([1.0, 0.0])
    z = torch.softmax(xi, 0)                               # [e/(e+1), 1/(e+1)] = [0.7311, 0.2689]
    J = torch.tensor([0.2, 0.6])
    g = M.reward_l2_gradient(z, J, xi, eta=0.01)
    zJ = 0.7311 * 0.2 + 0.2689 * 0.6
    expect = torch.tensor([0.7311 * (0.2 - zJ) + 0.01, 0.2689 * (0.6 - zJ)])
    assert torch.allclose(g, expect, atol=1e-4)
    assert torch.allclose(xi - 0.5 * g, torch.tensor([1.0, 0.0]) - 0.5 * expect, atol=1e-4)


def _simulate_weights(improvement_gain: float, steps: int = 3000, lam: float = 1.0, beta: float = 1.0):
    """K = 3 tasks with fixed rewards J = (0.2, 0.5, 0.8). A task improves in proportion to its share of
    the batch, I_k = gain * z_k (clipped to c = 0.1): more data on a task, more progress on it."""
    J = torch.tensor([0.2, 0.5, 0.8])
    xi = torch.zeros(3)
    for _ in range(steps):
        z = torch.softmax(xi, 0)
        I = M.task_improvement(torch.zeros(3), improvement_gain * z, clip=0.1)
        xi = xi - beta * M.iwu_gradient(z, I, J, lam)
    return torch.softmax(xi, 0)


def test_iwu_reward_only_collapses_onto_worst_task():
    """Fig. 2: with lambda-only signals (I = 0, eta = 0) the weights collapse onto the worst task."""
    z = _simulate_weights(improvement_gain=0.0)
    assert z[0] > 0.99


def test_iwu_improvement_signal_prevents_collapse():
    """With I_k = 0.2 z_k, IWU settles where every s_k = 0.2 z_k + lam J_k is equal (then g = 0):
    z_k = (c - lam J_k) / 0.2 with sum z = 1 gives c = 0.35 / 3 and z = (29, 20, 11) / 60 for lam = 0.1
    (the largest I = 0.2 * 29/60 = 0.097 stays under the clip c = 0.1). No collapse, worst task first."""
    z = _simulate_weights(improvement_gain=0.2, lam=0.1)
    assert torch.allclose(z, torch.tensor([29.0, 20.0, 11.0]) / 60, atol=1e-3)


def test_iwu_rejects_non_distribution():
    with pytest.raises(ValueError, match="z must be a probability vector"):
        M.iwu_gradient(torch.tensor([0.5, 0.6]), torch.zeros(2), torch.zeros(2), 0.2)
    with pytest.raises(ValueError, match="shape"):
        M.iwu_gradient(torch.tensor([0.5, 0.5]), torch.zeros(3), torch.zeros(2), 0.2)


def test_sec_distribution_boltzmann():
    p = M.sec_distribution(np.array([0.0, 0.2]), temperature=0.2)
    assert p == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])


# -----------------------------------------------------------------------------
# Algorithm 2: RP sampler, and the baselines' sampler


RATES = np.array([0.1, 0.5, 0.8])


def _fake_round(rng, rates):
    """generate + score + filter without a model: task k's prompt survives with prob 1 - rates[k]."""
    return lambda counts: ([[k] * int(rng.binomial(int(c), 1 - rates[k])) for k, c in enumerate(counts)], None)


def _mean_shares(sampler, z, B=32, draws=300, seed=0, **kw):
    rng = np.random.default_rng(seed)
    rho, shares, sizes = np.zeros(3), [], []
    for _ in range(draws):
        b = sampler(z, B, _fake_round(rng, RATES), rho, rng, **kw)
        rho = b.rho
        shares.append(np.bincount(b.tasks, minlength=3) / len(b.tasks))
        sizes.append(len(b.groups))
    return np.mean(shares, axis=0), sizes, rho


def test_rp_sampler_realized_shares_match_z():
    """Once every deficit is met, trimming keeps exactly n_k ~ Mult(B, z) prompts of task k, so a batch's
    share of task k has mean z_k and variance z_k (1 - z_k) / B; over S draws the mean share has std
    sqrt(z_k (1 - z_k) / (B S)). We allow 4 std (B = 32, S = 300: 0.013 for z = 0.8)."""
    z, B, S = np.array([0.1, 0.1, 0.8]), 32, 300
    shares, sizes, rho = _mean_shares(M.rp_sample, z, B, S)
    tol = 4 * np.sqrt(z * (1 - z) / (B * S))
    assert np.all(np.abs(shares - z) < tol), (shares, tol)
    assert all(s == B for s in sizes)
    assert np.allclose(rho, RATES, atol=0.15)  # the EMA tracks the true filter rates


def test_filtering_alone_under_represents_high_filter_task():
    """Fig. 12: drawing by z and filtering (DAPO / IWU-only) leaves task k a share of about
    z_k (1 - rho_k) / sum_j z_j (1 - rho_j): 0.8 * 0.2 / 0.3 = 0.533 for the 0.8-weight task. The
    tolerance is 4 std of the mean share, with the per-batch share std bounded by 0.5 / sqrt(B)."""
    z, B, S = np.array([0.1, 0.1, 0.8]), 32, 300
    shares, sizes, _ = _mean_shares(M.dynamic_sample, z, B, S)
    expect = z * (1 - RATES) / (z * (1 - RATES)).sum()
    assert np.all(np.abs(shares - expect) < 4 * 0.5 / np.sqrt(B * S)), (shares, expect)
    assert shares[2] < 0.6  # far below its weight 0.8
    assert all(s == B for s in sizes)


def test_grpo_sampler_is_one_unfiltered_round_of_b_prompts():
    """Plain GRPO = dynamic_sample with M_os = 1, N_rs = 0 and a round that filters nothing: exactly B
    prompts, one round, task counts ~ Mult(B, z) (mean share z_k, 4 std of the mean over S draws)."""
    rng, z, B, S = np.random.default_rng(4), np.array([0.2, 0.3, 0.5]), 16, 200
    keep_all = lambda counts: ([[k] * int(c) for k, c in enumerate(counts)], None)  # noqa: E731
    shares = []
    for _ in range(S):
        b = M.dynamic_sample(z, B, keep_all, np.zeros(3), rng, os_factor=1, max_rounds=0)
        assert len(b.groups) == B and b.rounds == 1 and b.accepted == b.generated
        shares.append(np.bincount(b.tasks, minlength=3) / B)
    assert np.all(np.abs(np.mean(shares, 0) - z) < 4 * np.sqrt(z * (1 - z) / (B * S)))


def test_rp_sampler_short_batch_and_round_cap():
    rng = np.random.default_rng(1)
    never = _fake_round(rng, np.array([1.0, 1.0, 0.9]))  # tasks 0, 1 always filtered
    for n_rs in (0, 2, 5):
        b = M.rp_sample(np.ones(3) / 3, 32, never, np.zeros(3), rng, max_rounds=n_rs)
        assert b.rounds == n_rs + 1  # the first round plus N_rs resampling rounds, never more
        assert len(b.groups) < 32 and set(b.tasks) <= {2}
        assert b.accepted[-1][0] == 0 and np.all(b.rho < 1)


def test_rp_sampler_exactly_b_when_enough_survive():
    rng = np.random.default_rng(2)
    for B in (1, 5, 32):
        b = M.rp_sample(np.array([0.2, 0.3, 0.5]), B, _fake_round(rng, RATES), np.zeros(3), rng)
        assert len(b.groups) == B == len(b.tasks)
        assert b.rounds <= 11 and sum(b.targets) == B


@pytest.mark.parametrize("sampler", [M.rp_sample, M.dynamic_sample])
def test_sampled_batch_order_mixes_tasks(sampler):
    """policy_update trains contiguous minibatches, so the batch must come out in random order: task k's
    share of the first minibatch (4 of B = 16) then has the same mean as its share of the whole batch.
    Per draw the two differ by a hypergeometric deviation of std <= 0.5 / sqrt(4); we allow 4 std of the
    mean over S = 300 draws (0.058). A batch sorted by task would put task 0's share near 1 up front."""
    rng, z, B, S = np.random.default_rng(5), np.array([0.2, 0.3, 0.5]), 16, 300
    head, whole = [], []
    for _ in range(S):
        b = sampler(z, B, _fake_round(rng, RATES), np.zeros(3), rng)
        head.append(np.bincount(b.tasks[:4], minlength=3) / 4)
        whole.append(np.bincount(b.tasks, minlength=3) / len(b.tasks))
    gap = np.abs(np.mean(head, 0) - np.mean(whole, 0))
    assert np.all(gap < 4 * 0.5 / np.sqrt(4 * S)), gap


def test_acceptance_aware_inflation_lowers_rounds():
    """Fig. 16. With z uniform and rates (0.05, 0.1, 0.75), M_os = 3: without inflation the first round
    accepts 3 * 0.25 = 0.75 of task 2's target, so a second round is (almost) always needed; with
    m = (1.05, 1.11, 4) the inflated round accepts 3 / mean(m) = 1.45x every target, so one usually
    suffices. Over 300 draws the mean rounds differ by ~0.7 with a standard error of ~0.03."""
    rates = np.array([0.05, 0.1, 0.75])
    mean_rounds = {}
    for inflate in (True, False):
        rng = np.random.default_rng(3)
        mean_rounds[inflate] = np.mean([M.rp_sample(np.ones(3) / 3, 64, _fake_round(rng, rates), rates, rng,
                                                    inflate=inflate).rounds for _ in range(300)])
    assert mean_rounds[True] < mean_rounds[False] - 0.3, mean_rounds


def test_inflation_is_capped_at_m_acc():
    """Alg. 2 line 2: m_k = min(1 / (1 - rho_k), M_acc). With z uniform and rho = (0.9, 0, 0) the first round draws
    by zhat = z m / sum(z m) with m = (5, 1, 1) under M_acc = 5, i.e. task 0 gets 5/7 = 0.714 of it (uncapped:
    10/12 = 0.833). Over S = 200 rounds of M_os B = 96 prompts the mean share has a std of at most
    sqrt(0.25 / 19200) = 0.0036; we allow 4 std."""
    rng, S = np.random.default_rng(6), 200
    keep_all = lambda counts: ([[k] * int(c) for k, c in enumerate(counts)], None)  # noqa: E731
    first = [M.rp_sample(np.ones(3) / 3, 32, keep_all, np.array([0.9, 0.0, 0.0]), rng, acc_cap=5.0).generated[0]
             for _ in range(S)]
    share = np.sum(first, axis=0)[0] / np.sum(first)
    assert abs(share - 5 / 7) < 4 * math.sqrt(0.25 / (96 * S)), share


def test_resampling_draws_only_tasks_in_deficit():
    """Alg. 2 line 14: after the first round, prompts are drawn by deficit_k m_k only. Tasks 0 and 1 never get
    filtered and task 2 always does, so once round 1 meets tasks 0 and 1's targets every later round's draws
    must all be task 2's."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        b = M.rp_sample(np.ones(3) / 3, 16, _fake_round(rng, np.array([0.0, 0.0, 1.0])), np.zeros(3), rng, max_rounds=2)
        if all(b.accepted[0][k] >= b.targets[k] for k in (0, 1)) and b.targets[2] > 0:
            assert [g[:2] for g in b.generated[1:]] == [[0, 0]] * (b.rounds - 1), b.generated


def test_filter_rate_ema_updates_every_generating_task():
    rho = M.update_filter_rates(np.array([0.5, 0.5, 0.5]), np.array([10, 4, 0]), np.array([10, 1, 0]), decay=0.9)
    # task 0: nothing filtered -> decays toward 0 (the released code would leave it at 0.5); task 2: no data
    assert rho == pytest.approx([0.45, 0.45 + 0.1 * 0.75, 0.5])


@pytest.mark.parametrize("kwargs,name", [
    (dict(z=np.array([0.5, 0.6, 0.1])), "z must be a probability"),
    (dict(B=0), "B \\(batch size"),
    (dict(rho=np.array([0.0, 1.0, 0.0])), "rho must"),
    (dict(rho=np.array([0.0, 0.0])), "rho must"),
    (dict(acc_cap=0.5), "M_acc"),
    (dict(max_rounds=-1), "N_rs"),
    (dict(os_factor=0.5), "M_os"),
])
def test_sampler_bad_arguments_name_the_argument(kwargs, name):
    args = dict(z=np.ones(3) / 3, B=4, sample_round=lambda c: ([[], [], []], None), rho=np.zeros(3),
                rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        M.rp_sample(**args)


# -----------------------------------------------------------------------------
# Metrics (Sec. 6)


def test_metrics_hand_computed():
    """evaluate(): task a's 2 prompts x k = 5 samples score [1, 0, 0.1, 1, 1] and [1, 1, 1, 1, 0] (0.1 is a wrong but
    boxed answer: not correct), so mean@5 = 7/10 = 0.7; task b's one prompt [0, 0, 0, 1, 0]: 0.2. Worst 0.2, average
    0.45. Logged in double precision: a float32 mean would log 0.2 as 0.20000000298."""
    rewards = {"a": [[1, 0, 0.1, 1, 1], [1, 1, 1, 1, 0]], "b": [[0, 0, 0, 1, 0]]}
    score = lambda examples, outs: [torch.tensor(r) for r in rewards[examples[0]]]  # noqa: E731
    sample = lambda ids, k: [None] * len(ids)  # noqa: E731
    rec = support.evaluate(sample, score, [(["a", "a"], [[1], [2]]), (["b"], [[3]])], ["a", "b"], k=5, seed=0, step=7)
    assert rec == {"kind": "eval", "step": 7, "acc": {"a": 0.7, "b": 0.2}, "worst": 0.2, "avg": pytest.approx(0.45, rel=1e-12)}
    acc = {"a": 0.5, "b": 0.2, "c": 0.9}
    base = {"a": 0.25, "b": 0.4, "c": 0.9}
    assert average_relative_change(acc, base) == pytest.approx(100 * (1.0 - 0.5 + 0.0) / 3)
    assert steps_to_threshold([10, 20, 30], [0.2, 0.41, 0.5], 0.4) == 20
    assert steps_to_threshold([10], [0.2], 0.4) is None


# -----------------------------------------------------------------------------
# The trainer end to end (Algorithm 1) on the tiny model


def _cfg(tmp_path, **kw):
    base = dict(M.PRESETS["tiny"])
    base.update(dict(steps=3, batch_size=4, minibatch_size=4, num_rollouts=4, eval_every=0, eval_k=2, eval_prompts=8,
                     n_train=200, max_resample_rounds=2, out_dir=str(tmp_path / "run")))
    base.update(kw)
    return M.Config(**base)


def _log(cfg):
    return [json.loads(line) for line in open(os.path.join(cfg.out_dir, "log.jsonl"))]


@pytest.mark.parametrize("method", M.METHODS)
def test_every_method_runs_and_logs_consistent_metrics(tmp_path, method):
    cfg = _cfg(tmp_path, **M.METHODS[method])
    M.train(cfg)
    log = _log(cfg)
    assert log[0]["kind"] == "config" and log[0]["method"] == method
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert sum(r["z"]) == pytest.approx(1.0) and sum(r["z_next"]) == pytest.approx(1.0)
        assert all(0 <= p < 1 for p in r["rho"])
        assert 1 <= r["rounds"] == len(r["generated"]) <= cfg.max_resample_rounds + 1
        assert all(abs(i) <= cfg.improvement_clip + 1e-6 for i in r["I"])  # float32 0.1 = 0.10000000149
        assert r["prompts_used"] == r["batch_groups"] <= cfg.batch_size
        if r["batch_groups"]:  # shares are counts of the trained batch over its size
            counts = [s * r["batch_groups"] for s in r["batch_shares"]]
            assert all(abs(c - round(c)) < 1e-6 for c in counts) and sum(r["batch_shares"]) == pytest.approx(1.0)
        assert r["prompts_generated"] == sum(map(sum, r["generated"])) >= r["prompts_used"]
        if method == "grpo":  # one round of B prompts, nothing filtered, z uniform
            assert r["rounds"] == 1 and r["batch_groups"] == cfg.batch_size and r["z"] == [1 / 3] * 3
        if method in ("dapo", "rps", "grpo"):
            assert r["z"] == pytest.approx([1 / 3] * 3)
        if method not in ("mtgrpo", "iwu"):
            assert r["I"] == [0.0] * 3
    if method in ("mtgrpo", "iwu"):
        # IWU descends (Subroutine 1, line 5). From xi_0 = 0, AdamW's first step is xi_1 = -lr g / (|g| + eps):
        # each task's logit moves by -0.025 sign(g_k), so log z_next, centred, is -0.025 sign(g), centred.
        first = train[0]
        z, I, J = (np.array(first[k]) for k in ("z", "I", "J"))
        s = I + cfg.lam * J
        g = z * (s - z @ s)
        step = -cfg.xi_lr * g / (np.abs(g) + 1e-8)
        log_z = np.log(first["z_next"])
        assert np.allclose(log_z - log_z.mean(), step - step.mean(), atol=2e-4), (log_z - log_z.mean(), step - step.mean())
    evals = [r for r in log if r["kind"] == "eval"]  # at step 0, before any update, and at the end
    assert [e["step"] for e in evals] == [0, 3] and set(evals[0]["acc"]) == {"toy_copy", "toy_next", "toy_first"}
    assert all(e["worst"] == min(e["acc"].values()) for e in evals)
    assert log.index(evals[0]) == 1  # the step-0 evaluation precedes every train record


def test_mtgrpo_lifts_the_worst_task_on_the_testbed(tmp_path, capsys):
    """Learning signal on the CPU testbed (the warm-started tiny model, --preset tiny): 30 MT-GRPO steps lift the
    worst task's test accuracy, read from the log's own step-0 evaluation, by more than 0.15. The binomial std of a
    mean@4 on 100 prompts is at most 0.5 / sqrt(400) = 0.025 per evaluation, so 0.15 is six stds of their
    difference; a sign error anywhere (advantage, ratio, IWU direction) leaves the worst task where it starts or
    lowers it. The run ends with the summary a newcomer reads: each task's start, end and change."""
    cfg = _cfg(tmp_path, **{k: M.PRESETS["tiny"][k] for k in ("batch_size", "num_rollouts", "minibatch_size", "max_resample_rounds")},
               steps=30, eval_every=0, eval_prompts=100, eval_k=4)
    M.train(cfg)
    evals = [r for r in _log(cfg) if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 30]
    assert evals[-1]["worst"] > evals[0]["worst"] + 0.15, evals
    out = capsys.readouterr().out
    assert "step 0" in out and f"{'worst task':12s} {evals[0]['worst']:10.3f} {evals[-1]['worst']:10.3f}" in out, out[-600:]


def test_warm_start_gives_graded_partial_competence():
    """The testbed's preconditions at the scale the tests use (seed 0, the cached warm start every trainer test
    loads): each task's expected test accuracy (the mean probability of the right answer over 200 test prompts)
    lies above chance (a uniform guess over 6 letters: 1/6) and well below saturation (0.6), and the tasks are
    graded: toy_copy, the easiest, leads toy_first by more than 0.15."""
    from models import tiny_model_dir

    acc = json.load(open(os.path.join(tiny_model_dir(0), "warm_start.json")))["test_accuracy"]
    assert set(acc) == {"toy_copy", "toy_next", "toy_first"}
    assert all(1 / 6 < a < 0.6 for a in acc.values()), acc
    assert acc["toy_copy"] > acc["toy_first"] + 0.15, acc


def test_warm_start_is_a_function_of_the_seed_and_cached(tmp_path, monkeypatch):
    """Two warm starts of one seed give identical weights (a cached model must not depend on the run that built
    it), another seed differs, and a second call takes the cached directory without training again."""
    import models

    monkeypatch.setenv("MTGRPO_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "WARM_START_STEPS", (3, 3))  # a different cache key, and seconds
    paths = [models.tiny_model_dir(0), models.tiny_model_dir(1)]
    shutil.copytree(paths[0], tmp_path / "first")
    shutil.rmtree(paths[0])
    assert models.tiny_model_dir(0) == paths[0]
    weights = [load_model(str(p), torch.device("cpu"))[0].state_dict() for p in (tmp_path / "first", paths[0], paths[1])]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    monkeypatch.setattr(models, "warm_start", lambda *a, **k: pytest.fail("trained again instead of using the cache"))
    assert models.tiny_model_dir(1) == paths[1]


def test_resume_equals_uninterrupted_run(tmp_path):
    """A run checkpointed at step 3 and resumed reproduces the uninterrupted run's log (timings aside)
    and its final weights bit for bit."""
    full = _cfg(tmp_path, steps=6, save_every=3, out_dir=str(tmp_path / "full"))
    M.train(full)
    resumed = M.parse_args(["--resume", str(tmp_path / "full" / "checkpoint-3"), "--out-dir", str(tmp_path / "resumed")])
    assert resumed.steps == 6 and resumed.lr == full.lr  # the checkpoint's config came back
    with pytest.raises(ValueError, match="--preset and --method cannot go with --resume"):
        M.parse_args(["--resume", str(tmp_path / "full" / "checkpoint-3"), "--preset", "exp1"])
    M.train(resumed)
    strip = lambda log: [{k: v for k, v in r.items() if not k.startswith(("seconds", "gen_tokens_per_s")) and k not in ("out_dir", "resume")}
                         for r in log]  # noqa: E731
    assert strip(_log(full)) == strip(_log(resumed))
    a = load_model(str(tmp_path / "full" / "checkpoint-6"), torch.device("cpu"))[0].state_dict()
    b = load_model(str(tmp_path / "resumed" / "checkpoint-6"), torch.device("cpu"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_old_logprob_pass_equals_training_forward(tiny):
    """pi_old for minibatches 2.. comes from a no-grad pass before any update; at theta_t it must equal
    the training forward exactly, or the first-update ratio would not be 1."""
    model, tok = tiny
    rows = _rows(tok)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=tok.pad_token_id)
    no_grad = policy.batch_logprobs(logprobs, rows, list(range(6)), 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats, forward = M.grpo_update(logprobs, opt, rows, list(range(6)), None, micro_batch_size=4)
    assert torch.equal(no_grad * rows.mask, forward * rows.mask)
    stats, _ = M.grpo_update(logprobs, opt, rows, list(range(6)), no_grad, micro_batch_size=4)
    assert stats["ratio_mean"] == 1.0 and stats["clip_frac"] == 0.0


def test_later_minibatches_use_the_pass_before_the_first_update(tiny_dir):
    """pi_old of minibatches 2.. is theta_t's (one no-grad pass before any update), not the current weights':
    after minibatch 1's step their ratio pi / pi_old moves off 1, while minibatch 1's is exactly 1."""
    model, tok = load_model(tiny_dir, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    groups = [M.Group(0, tok(f"copy {c}:")["input_ids"], resp := torch.randint(2, 90, (4, 5), generator=g),
                      policy.response_mask(resp, [1]), torch.tensor([1.0, 0.0, 0.0, 1.0])) for c in "abcd"]
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=tok.pad_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    rows = M.flatten_groups(groups, True, tok.pad_token_id)
    cfg = M.Config(minibatch_size=1, micro_batch_size=4, eps_low=0.2, eps_high=0.28, loss_agg="token_mean", grad_clip=1.0)
    stats, _ = M.policy_update(logprobs, opt, rows, 4, cfg)
    assert stats["updates"] == 4 and stats["ratio_first_update"] == 1.0
    assert abs(stats["ratio_mean"] - 1.0) > 1e-3, stats  # minibatches 2..4 ran on moved weights


def test_trains_on_a_jsonl_task_next_to_a_builtin_one(tmp_path):
    """Bring-your-own task: a JSONL file is a task like any other (its name in the log is the file stem)."""
    rows = [{"prompt": f"rev: {a}{b}", "answer": a, "verifier": "toy", "info": {"alphabet": "abcdef"}}
            for a in "abcdef" for b in "abcdef"]
    path = tmp_path / "rev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, tasks=f"toy_copy,{path}", steps=2)
    M.train(cfg)
    log = _log(cfg)
    evals = [r for r in log if r.get("kind") == "eval"]
    assert set(evals[-1]["acc"]) == {"toy_copy", "rev"}
    assert all(len(r["z"]) == 2 for r in log if r.get("kind") == "train")


def test_local_path_loads_through_from_pretrained(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path, model=tiny_dir, steps=1)
    M.train(cfg)
    assert os.path.isfile(os.path.join(cfg.out_dir, "checkpoint-1", "model.safetensors"))


@pytest.mark.parametrize("argv,message", [
    (["--method", "ppo"], "--method must be one of"),
    (["--tasks", "toy_copy,chess"], "chess"),
    (["--tasks", "toy_copy,/no/such/file.jsonl"], "does not exist"),
    (["--model", "./no/such/dir"], "no such directory"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num-rollouts", "1"], "--num-rollouts"),
    (["--lam", "-1"], "--lam"),
    (["--temperature", "0"], "--temperature"),
    (["--max-response-len", "0"], "--max-response-len"),
    (["--acc-cap", "0.5"], "--acc-cap"),
    (["--max-resample-rounds", "-1"], "--max-resample-rounds"),
    (["--eval-k", "0"], "--eval-k"),
    (["--sec-temperature", "0"], "--sec-temperature"),
    (["--sec-decay", "1"], "--sec-decay"),
    (["--weighting", "reward_l2"], "pass --xi-optimizer sgd"),
    (["--weighting", "reward_l2", "--xi-optimizer", "adamw"], "or adam (released code)"),
    (["--out-dir", "/proc/mtgrpo-not-writable"], "--out-dir"),
    (["--resume", "/tmp"], "is not a checkpoint"),
    (["--tasks", "toy_copy,toy_next,toy_copy"], "toy_copy more than once"),
    (["--batch-size", "4", "--minibatch-size", "8"], "--minibatch-size 8 is larger than --batch-size 4"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    argv = argv + (["--out-dir", str(tmp_path / "o")] if "--out-dir" not in argv else [])
    assert M.main(argv + ["--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_flags_presets_and_booleans(capsys, tmp_path):
    (tmp_path / "warm_start.json").write_text("{}")  # a warm-started tiny model's directory gets the tiny preset too
    for model in ("tiny", str(tmp_path)):
        assert (M.parse_args(["--model", model]).tasks, M.parse_args(["--model", model]).lr) == (M.PRESETS["tiny"]["tasks"], 1e-3)
    assert M.parse_args(["--model", "Qwen2.5-3B"]).lr == 1e-6
    cfg = M.parse_args(["--model", "Qwen2.5-3B", "--preset", "exp1", "--num-rollouts", "16"])
    assert (cfg.batch_size, cfg.num_rollouts, cfg.steps, cfg.prompt_style) == (32, 16, 720, "r1")  # explicit flags win
    exp2 = M.parse_args(["--model", "Qwen2.5-3B", "--preset", "exp2"])
    assert (exp2.batch_size, exp2.steps, exp2.filter, exp2.prompt_style) == (256, 720, "lenient", "r1")
    assert M.parse_args(["--no-inflate"]).inflate is False and M.parse_args(["--inflate"]).inflate is True
    with pytest.raises(SystemExit):   # a typo is an error, not a silent False
        M.parse_args(["--inflate", "ture"])
    assert "unrecognized arguments: ture" in capsys.readouterr().err


def test_reward_l2_ablation_takes_the_papers_plain_step(tmp_path):
    """Subroutine 2 in the loop as the paper writes it: xi <- xi - beta (g + eta xi), g_k = z_k (J_k - z.J), no
    lambda and no I_k pass (lam is set to 0.7 to show that it is not used).
    sum(xi) starts at 0 and the step keeps it there, so xi = log z - mean(log z); the logged z and
    z_next must then satisfy log z_next - log z = -beta (g + eta xi) up to a constant."""
    beta, eta = 2.0, 0.05
    cfg = _cfg(tmp_path, weighting="reward_l2", xi_optimizer="sgd", xi_lr=beta, eta=eta, steps=4, lam=0.7)
    M.train(cfg)
    train = [r for r in _log(cfg) if r.get("kind") == "train"]
    for r, nxt in zip(train, train[1:]):
        assert r["z_next"] == pytest.approx(nxt["z"])
    for r in train:
        assert r["I"] == [0.0, 0.0, 0.0]
        z, J = np.array(r["z"]), np.array(r["J"])
        xi = np.log(z) - np.log(z).mean()
        shift = np.log(r["z_next"]) - np.log(z) + beta * (z * (J - z @ J) + eta * xi)
        assert np.ptp(shift) < 1e-5, shift
    assert max(abs(a - b) for r in train for a, b in zip(r["z"], r["z_next"])) > 1e-3   # z did move


def test_reward_l2_with_adam_as_the_released_code(tmp_path):
    """--xi-optimizer adam: Subroutine 2 as the released code runs it, Adam with weight decay eta. From xi_0 = 0
    Adam's first step is -lr g / (|g| + eps) (the decay term eta xi_0 is 0), so centred log z_next = -lr sign(g), centred."""
    cfg = _cfg(tmp_path, weighting="reward_l2", xi_optimizer="adam", eta=0.01, steps=1)
    M.train(cfg)
    r = next(x for x in _log(cfg) if x["kind"] == "train")
    z, lj = np.array(r["z"]), np.array(r["J"])
    step = -cfg.xi_lr * (g := z * (lj - z @ lj)) / (np.abs(g) + 1e-8)
    log_z = np.log(r["z_next"])
    assert np.ptp(g) > 0 and np.allclose(log_z - log_z.mean(), step - step.mean(), atol=2e-4)


def test_gpu_benchmark_runs_the_trainers_step_on_cpu():
    """bench/gpu.py cannot run in CI on its GPU shape; its --smoke shape keeps it in step with the trainer:
    B = 4 groups trained, every generated prompt has N = 4 rows of 32 tokens, figures in range."""
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--steps", "1"], cwd=here, capture_output=True,
                       text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    step = re.search(r"generated (\d+) responses, (\d+) tokens \| trained (\d+) groups", p.stdout)
    responses, tokens, groups = map(int, step.groups())
    assert groups == 4 and responses % 4 == 0 and responses >= 16 and tokens == 32 * responses
    figures = dict(line.split()[:2] for line in p.stdout.splitlines()[-5:])
    assert 0 < float(figures["bookkeeping_share"]) < 1 and float(figures["update_tokens_per_s"]) > 0


def test_unreachable_hub_names_the_alternatives(tmp_path):
    """No network (HF_HUB_OFFLINE=1, read at import, hence a subprocess): one line, exit 2, the way out."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    p = subprocess.run([sys.executable, "mtgrpo.py", "--model", "Qwen2.5-0.5B", "--out-dir", str(tmp_path / "o")],
                       cwd=os.path.dirname(os.path.abspath(__file__)), env=env, capture_output=True, text=True, timeout=120)
    last = p.stderr.strip().splitlines()[-1]
    assert "Traceback" not in p.stderr
    assert p.returncode == 2 and last.startswith("error: could not load model 'Qwen/Qwen2.5-0.5B'")
    assert "local directory" in last and "--model tiny" in last
    assert not os.path.exists(tmp_path / "o")  # a failed start leaves no files behind


# -----------------------------------------------------------------------------
# Runs that survive interruption: signals, damaged checkpoints, out-dir reuse (subprocesses: ~40 s in all)

ROOT = os.path.dirname(os.path.abspath(__file__))
SHORT = ["--model", "tiny", "--steps", "14", "--eval-every", "7", "--eval-prompts", "8", "--eval-k", "2"]


def _records(run_dir):
    """A run's train and eval records without the timing fields."""
    return [{k: v for k, v in r.items() if not k.startswith("seconds")}
            for r in map(json.loads, open(os.path.join(run_dir, "log.jsonl"))) if r["kind"] != "config"]


def _weights(ckpt):
    return load_model(ckpt, torch.device("cpu"))[0].state_dict()


def _interrupt(out_dir, signals, after_steps=3):
    """Start the CLI, wait until `after_steps` steps are logged, send the first signal, and a second one (if given) as
    soon as the handler has answered, so that it lands while the step is still running -> (status, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, "mtgrpo.py", *SHORT, "--out-dir", str(out_dir)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out_dir / "log.jsonl"
    while p.poll() is None and not (log.exists() and log.read_text().count('"kind": "train"') >= after_steps):
        time.sleep(0.05)
    p.send_signal(signals[0])
    if len(signals) > 1:
        for line in p.stderr:
            if "saving after this step" in line:
                break
        p.send_signal(signals[1])
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """SIGINT mid-run: the step finishes, a checkpoint is written, exit 130 with no traceback and the resume command;
    resuming gives the uninterrupted run's log (timings aside) and its final weights bit for bit."""
    assert M.main([*SHORT, "--out-dir", str(tmp_path / "full")]) == 0
    rc, out, err = _interrupt(tmp_path / "cut", [signal.SIGINT])
    assert rc == 130 and "Traceback" not in err and f"--resume {tmp_path / 'cut'}" in out, (rc, out[-500:], err[-500:])
    stopped_at = int(re.search(r"stopped after step (\d+)", out).group(1))
    assert 3 <= stopped_at < 14 and support.checkpoints(str(tmp_path / "cut"))[-1].endswith(f"checkpoint-{stopped_at}")
    assert M.main(["--resume", str(tmp_path / "cut")]) == 0
    assert _records(tmp_path / "full") == _records(tmp_path / "cut")
    a, b = _weights(str(tmp_path / "full" / "checkpoint-14")), _weights(str(tmp_path / "cut" / "checkpoint-14"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_and_a_second_signal_quits_at_once(tmp_path):
    rc, out, err = _interrupt(tmp_path / "term", [signal.SIGTERM])
    assert rc == 143 and "Traceback" not in err and "stopped after step" in out
    assert support.checkpoints(str(tmp_path / "term"))
    t = time.perf_counter()
    rc, out, err = _interrupt(tmp_path / "twice", [signal.SIGINT, signal.SIGINT], after_steps=1)
    assert rc == 130 and "Traceback" not in err and "stopped after step" not in out  # quit without finishing the step
    assert time.perf_counter() - t < 60


def test_checkpoints_are_atomic_kept_and_refused_when_damaged(tmp_path, capsys):
    """Only the newest --keep-checkpoints complete checkpoints stay; a half-written one (.tmp) is never picked; a
    truncated, empty or code-running trainer_state.pt is refused in one line that names the checkpoint to use."""
    run = tmp_path / "run"
    assert M.main([*SHORT, "--steps", "4", "--save-every", "1", "--out-dir", str(run)]) == 0
    assert sorted(os.listdir(run)) == ["checkpoint-3", "checkpoint-4", "log.jsonl"]
    (run / "checkpoint-9.tmp").mkdir()  # a write that was cut short
    assert support.read_checkpoint(str(run))[0] == str(run / "checkpoint-4")
    state = run / "checkpoint-4" / "trainer_state.pt"
    data = state.read_bytes()

    class Planted:  # unpickling this would create a file
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    for damage in (data[:len(data) // 2], b"", None):
        if damage is None:
            torch.save({"config": {}, "payload": Planted()}, state)
        else:
            state.write_bytes(damage)
        capsys.readouterr()
        assert M.main(["--resume", str(run), "--steps", "6"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "damaged or unsafe" in err[0] and "resume from" in err[0] and "checkpoint-3" in err[0], err
    assert not (tmp_path / "pwned").exists()
    assert M.main(["--resume", str(run / "checkpoint-3"), "--steps", "5", "--out-dir", str(tmp_path / "on")]) == 0


def test_out_dir_reuse_is_refused_overwrite_clears_and_a_finished_run_says_so(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert M.main([*SHORT, "--steps", "2", "--out-dir", out]) == 0
    capsys.readouterr()
    assert M.main([*SHORT, "--steps", "2", "--out-dir", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]
    assert M.main(["--resume", out]) == 0 and "the run is finished" in capsys.readouterr().out
    assert M.main([*SHORT, "--steps", "1", "--out-dir", out, "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["checkpoint-1", "log.jsonl"]  # the old run's checkpoint-2 is gone
    shutil.move(out, tmp_path / "moved")  # a run directory goes on where it is now, not where it was made
    assert M.main(["--resume", str(tmp_path / "moved"), "--steps", "2"]) == 0
    assert not os.path.exists(out) and support.checkpoints(str(tmp_path / "moved"))[-1].endswith("checkpoint-2")


def test_failed_start_leaves_no_files_and_the_cli_lists_tasks_and_explains_every_flag(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b", "verifier": "exact"}\n{"prompt": \n')
    assert M.main(["--tasks", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2:") and err.count("line") == 0 and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        M.parse_args(["--list-tasks"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("countdown_{easy,medium,hard,very_hard}", "toy_copy", ".jsonl"))
    with pytest.raises(SystemExit):
        M.parse_args(["--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(M.Config):
        assert f.metadata["help"] and " ".join(f.metadata["help"].split())[:40] in helptext, f.name
    assert "--steps STEPS training steps (paper: 720) (default 200; with --model tiny: 100)" in helptext


def test_speedups_off_trains_the_same_run(tmp_path):
    """--no-share-prompts runs the plain generate() and log-prob forward. Same seed, same samples: the sampled
    tokens, hence rewards, filter decisions and batches, are identical step by step; the log-probs differ only
    by float reordering (a prompt run once vs per row), so the losses agree to 1e-4 and z to 1e-5."""
    logs = []
    for share in (True, False):
        cfg = _cfg(tmp_path, steps=2, share_prompts=share, out_dir=str(tmp_path / f"share{share}"))
        M.train(cfg)
        logs.append([r for r in _log(cfg) if r["kind"] in ("train", "eval")])
    for fast, plain in zip(*logs):
        for key in ("train_acc", "generated", "accepted", "batch_shares", "targets", "acc"):
            assert fast.get(key) == plain.get(key), key
        for key in ("loss", "ratio_mean"):
            if key in fast:
                assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
        if "z_next" in fast:
            assert fast["z_next"] == pytest.approx(plain["z_next"], abs=1e-5)


def test_readme_shows_what_the_walkthrough_prints_today():
    """README.md's "One step, worked" block is bench/walkthrough.py's output on the current code: a change to
    any step function that moves a number makes this fail until the README is regenerated. (~20 s)"""
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "bench/walkthrough.py"], cwd=here, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    readme = open(os.path.join(here, "README.md")).read()
    section = readme[readme.index("## One step, worked"):]
    block = section[section.index("```text\n") + len("```text\n"):]
    block = block[:block.index("```")]
    assert block == p.stdout, "README.md's walkthrough block is stale: paste bench/walkthrough.py's output"


def test_report_to_sends_the_logs_records_to_tensorboard(tmp_path):
    """--report-to tensorboard: the trainer's train and eval records reach the event file under log.jsonl's
    names, with the same numbers (read back through TensorBoard's own reader)."""
    pytest.importorskip("tensorboard", reason="pip install -r requirements-trackers.txt")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tmp_path, steps=2, report_to="tensorboard")
    M.train(cfg)
    events = EventAccumulator(os.path.join(cfg.out_dir, "tensorboard"))
    events.Reload()
    log = _log(cfg)
    train = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    checks = (("z/toy_first", train, lambda r: r["z"][2]), ("eval/worst", evals, lambda r: r["worst"]),
              ("loss", train, lambda r: r["loss"]))
    for tag, records, value in checks:
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [r["step"] for r in records], tag
        assert [e.value for e in scalars] == pytest.approx([value(r) for r in records], rel=1e-6), tag
