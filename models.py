"""
The model side of mtgrpo: loading a policy and its tokenizer, the prompt style and stop ids it needs, the
tokenized task splits, and the tiny CPU testbed model with its warm start.

It is separate from tasks.py because the two answer different questions: tasks.py says what to learn
(generators, task files, prompt text) with the standard library alone; this module says what learns it,
and needs torch and transformers. So a task can be generated, listed or checked without loading
either, and tasks.py never imports this module (this module imports tasks).

    model, tokenizer = load_model("Qwen2.5-0.5B", device="cuda")   # or "tiny": the warm-started testbed
    style = prompt_style("auto", model, tokenizer)                  # "chat" for instruct models, else "r1"
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from example import Example
from tasks import load_task, make_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


# -----------------------------------------------------------------------------
# Loading a model and its tokenizer

def load_model(name: str, device: torch.device | str | None = None, grad_checkpointing: bool = False,
               seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy and its tokenizer by from_pretrained, for a hub name ('Qwen2.5-0.5B' means
    'Qwen/Qwen2.5-0.5B') or a local directory alike ("tiny": tiny_model_dir(seed)), ready to train on
    `device`. Master weights stay fp32: AdamW at lr 1e-6 on bf16 weights rounds most updates away, and bf16
    comes from autocast. Errors name the way out."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()  # third-party bars would cut through the trainer's step lines
    disable_progress_bars()
    if name == "tiny":  # the warm-started one: the CPU testbed
        return load_model(tiny_model_dir(seed), device, grad_checkpointing)
    path = os.path.expanduser(name)
    if name.startswith((".", "/", "~")) and not os.path.isdir(path):
        raise ValueError(f"--model {name!r}: no such directory; pass a directory written by save_pretrained, "
                         "a hub name like Qwen/Qwen2.5-0.5B, or --model tiny")
    if not (os.path.isdir(path) or "/" in path):
        if not path.lower().startswith("qwen"):
            raise ValueError(f"--model {name!r} is neither a local directory nor a hub name 'org/name'; "
                             "pass e.g. Qwen/Qwen2.5-0.5B, a local path, or --model tiny")
        path = f"Qwen/{path}"
    try:
        path = path if os.path.isdir(path) else _cached_or_reachable(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        # transformers 5 forces Qwen2Tokenizer for model type qwen2, which mangles a plain fast tokenizer
        # (the tiny one loses its spaces): load by the class the tokenizer was saved as.
        cls = AutoTokenizer
        cfg_file = os.path.join(path, "tokenizer_config.json")
        fast_classes = ("PreTrainedTokenizerFast", "TokenizersBackend")
        if os.path.isfile(cfg_file) and json.load(open(cfg_file)).get("tokenizer_class") in fast_classes:
            cls = PreTrainedTokenizerFast
        tokenizer = cls.from_pretrained(path, padding_side="left")
    except OSError as e:
        raise ValueError(f"could not load model {path!r} ({str(e).splitlines()[0]}). Without network access, "
                         "pass a local directory holding a saved model (--model /path/to/model) "
                         "or use --model tiny") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Dropout off for good: pi_old (no-grad pass) and pi_theta (training pass) must be the same function, or
    # the first ratio would not be 1. Train mode stays on because HF gradient checkpointing needs it.
    for m in (m for m in model.modules() if isinstance(m, torch.nn.Dropout)):
        m.p = 0.0
    model.config.attention_dropout = 0.0
    if grad_checkpointing:  # transformers 5.2x renamed the method
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = True
    return model.train().to(device), tokenizer


def _cached_or_reachable(name: str) -> str:
    """A hub model's snapshot in the local cache, else its name once the hub answers: without a network this
    fails in seconds with one reason, instead of a storm of retries inside from_pretrained."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, snapshot_download
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached (or not fully): go online if we can
        pass
    if constants.HF_HUB_OFFLINE:
        raise OSError("not in the local cache, and HF_HUB_OFFLINE is set")
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        raise OSError(f"not in the local cache, and {host} cannot be reached ({e})") from None
    return name


# -----------------------------------------------------------------------------
# Prompt style and stop ids

def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token a chat template closes the assistant's turn with (<|im_end|> in ChatML), found by rendering
    one exchange and reading what follows the answer; None without a template, or if no special token
    follows."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "MTGRPO-ANSWER"
    exchange = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
    text = tokenizer.apply_chat_template(exchange, tokenize=False)
    ids = tokenizer(text[text.rindex(mark) + len(mark):], add_special_tokens=False)["input_ids"]
    special = tokenizer.all_special_ids + list(tokenizer.added_tokens_decoder)
    return ids[0] if ids and ids[0] in special else None


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's EOS ids (its generation config may give one id, a list, or none) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    listed = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(set(listed + [tokenizer.eos_token_id]) - {None})


def prompt_style(style: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """--prompt-style auto: the chat template for chat (instruct) models, the paper's raw r1 wrapper for base
    models. A model counts as a chat model when its tokenizer has a chat template whose end-of-turn token is
    one of the model's own EOS ids: instruct checkpoints stop there (Qwen2.5-Instruct, SmolLM2-Instruct),
    while base checkpoints ship the same template but stop at <|endoftext|> (Qwen2.5 base)."""
    if style != "auto":
        return style
    return "chat" if end_of_turn_id(tokenizer) in _eos_ids(model, tokenizer) else "r1"


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   style: str = "r1") -> list[int]:
    """Every id that ends a response: the model's EOS ids (its generation config may list several), plus the
    chat template's end-of-turn token when prompts use the template, so a chat-style rollout stops at the end
    of its turn."""
    eot = end_of_turn_id(tokenizer) if style == "chat" else None
    return sorted(set(_eos_ids(model, tokenizer) + ([eot] if eot is not None else [])))


# -----------------------------------------------------------------------------
# Tokenized task splits, and padding a batch of them

def tokenize_tasks(loaded: list[tuple[list[Example], list[Example]]], tokenizer: PreTrainedTokenizerBase,
                   n_test: int, max_prompt_len: int,
                   style: str) -> tuple[list[str], list[tuple[list, list]], list[tuple[list, list]]]:
    """Tokenize every task's prompts once, in prompt style r1, chat or plain: -> labels, train, test, where
    train[k] = (examples, prompt id lists). Prompts over max_prompt_len tokens are dropped, loudly: the
    trainer cannot truncate a prompt without changing its question."""
    train, test = [], []
    for tr, te in loaded:
        name = tr[0].task
        print(f"task {name}: prompt style {'plain (toy)' if tr[0].verifier == 'toy' else style}")
        for split, out in ((tr, train), (te, test)):
            texts = [make_prompt(ex, style=style, tokenizer=tokenizer) for ex in split]
            ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
            keep = [i for i, p in enumerate(ids) if len(p) <= max_prompt_len]
            if len(keep) < len(split):
                print(f"note: {name}: dropped {len(split) - len(keep)} of {len(split)} prompts longer than "
                      f"--max-prompt-len {max_prompt_len}")
            out.append(([split[i] for i in keep], [ids[i] for i in keep]))
        if len(test[-1][0]) < n_test:
            longest = max(len(p) for p in ids)
            raise ValueError(f"task {name}: {len(test[-1][0])} test prompts fit --max-prompt-len "
                             f"{max_prompt_len}, fewer than --eval-prompts {n_test} "
                             f"(the longest has {longest} tokens); "
                             "raise --max-prompt-len or lower --eval-prompts")
        if not train[-1][0]:
            raise ValueError(f"task {name}: no train prompt fits --max-prompt-len {max_prompt_len}")
    return [tr[0].task for tr, _ in train], train, test   # a .jsonl task is logged under its file's stem


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention_mask), both (R, L), padded on the left: a batch of prompts of unequal
    length then ends at the same column, where generation and the response's log-probs begin."""
    def pad(xs: list[torch.Tensor], value: int) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence(xs, batch_first=True, padding_value=value, padding_side="left")

    ids = pad([torch.tensor(s, dtype=torch.long) for s in seqs], pad_id)
    mask = pad([torch.ones(len(s), dtype=torch.long) for s in seqs], 0)
    return ids, mask


# -----------------------------------------------------------------------------
# The tiny CPU testbed model

def build_tiny_model(path: str, newline: bool = True, seed: int = 0) -> str:
    """Write a tiny random Qwen2 (hidden 128, 2 layers, 0.5M params) and a character-level tokenizer to
    `path`. Vocab: <pad>=0, <|endoftext|>=1 (EOS), printable ASCII 32..126, and '\\n' if `newline`.
    Small enough to train on a CPU in seconds, and a real HF architecture, so every code path is the one a
    hub model takes."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    chars = [chr(c) for c in range(32, 127)] + (["\n"] if newline else [])
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<|endoftext|>"] + chars)}
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|endoftext|>",
                                        unk_token="<pad>", padding_side="left", model_max_length=512)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=512, tie_word_embeddings=True,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -----------------------------------------------------------------------------
# The tiny model's warm start. RL from random weights gets no reward on a task the model cannot solve by luck,
# while the paper starts from a pretrained model that solves every task some of the time. So the tiny model
# first learns each toy rule on clean labels (phase 1), then is distilled to partial competence (phase 2):
# probability q_k on the right answer and 1 - q_k on a misconception that another task's rule gives (copy <->
# first, next -> copy). RL then starts with graded accuracies, hence graded zero-gradient filter rates, and
# learning one task can undo another, as skills interfere in real multi-task training. The q_k were fixed
# before any method was compared.

# q_k: the right answer's probability after the warm-up
WARM_START = {"toy_copy": 0.5, "toy_next": 0.3, "toy_first": 0.1}
WARM_START_STEPS = (150, 300)  # phase 1, phase 2 (AdamW at lr 3e-3, 16 prompts per task per step)


def toy_misconception(ex: Example) -> str:
    """The wrong answer the warm start teaches with probability 1 - q_k: another toy task's rule."""
    s = ex.question.split(": ", 1)[1]
    return {"toy_copy": s[0], "toy_next": s[-1], "toy_first": s[-1]}[ex.task]


def warm_start(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int = 0,
               q: dict[str, float] = WARM_START, steps: tuple[int, int] = WARM_START_STEPS, batch: int = 16,
               lr: float = 3e-3) -> dict[str, float]:
    """Supervised warm-up of the tiny model, in place, on the train splits only: phase 1 learns each task's
    rule, phase 2 minimises the cross-entropy to the mixture q_k (right answer) / 1 - q_k (misconception),
    answer and EOS. -> the right answer's mean probability per task on its test split: the expected accuracy
    of a sample at temperature 1."""
    names = list(q)
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    splits = {name: load_task(name, n_train=1000, n_test=200, seed=seed) for name in names}
    train = {}  # task -> [(prompt, right answer + EOS, misconception + EOS) token ids]
    for name in names:
        train[name] = [(enc(ex.question), enc(ex.answer) + [eos], enc(toy_misconception(ex)) + [eos])
                       for ex in splits[name][0]]

    def forward(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, att = left_pad(prompts, tokenizer.pad_token_id)
        position_ids = (att.cumsum(1) - 1).clamp(min=0)
        return model(input_ids=ids, attention_mask=att, position_ids=position_ids).logits, ids

    def step(opt: torch.optim.Optimizer, mixed: bool) -> None:
        seqs, weights = [], []
        for name in names:
            for prompt, right, wrong in rng.sample(train[name], batch):
                seqs += [prompt + right, prompt + wrong] if mixed else [prompt + right]
                weights += [q[name], 1 - q[name]] if mixed else [1.0]
        logits, ids = forward(seqs)
        logp_all = F.log_softmax(logits[:, -3:-1].float(), dim=-1)   # predicting the answer and the EOS
        logp = logp_all.gather(2, ids[:, -2:, None]).squeeze(-1)
        loss = -(logp.sum(1) * torch.tensor(weights)).sum() / (len(names) * batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    torch.manual_seed(seed)
    model.train()
    for phase, n_steps in enumerate(steps):
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        for _ in range(n_steps):
            step(opt, mixed=phase == 1)
    with torch.no_grad():
        acc = {}
        for name in names:
            test = splits[name][1]
            logits, _ = forward([enc(ex.question) for ex in test])
            right = torch.tensor([enc(ex.answer)[0] for ex in test])
            acc[name] = float(torch.softmax(logits[:, -1].float(), -1).gather(1, right[:, None]).mean())
    return acc


def tiny_model_dir(seed: int = 0) -> str:
    """The warm-started tiny model of `seed` (build_tiny_model, then warm_start), built once and cached on
    disk under $MTGRPO_CACHE (default ~/.cache/mtgrpo); its warm_start.json holds the accuracies the warm
    start reached. The cache key is the warm start's recipe, so a changed recipe builds a new model."""
    import shutil

    from transformers.utils import logging
    logging.disable_progress_bar()
    key = hashlib.sha256(json.dumps([WARM_START, WARM_START_STEPS]).encode()).hexdigest()[:8]
    cache = os.environ.get("MTGRPO_CACHE", os.path.expanduser("~/.cache/mtgrpo"))
    path = os.path.join(cache, f"tiny-warm-{key}-seed{seed}")
    if os.path.isfile(os.path.join(path, "warm_start.json")):
        return path
    t0 = time.perf_counter()
    tmp = f"{path}.tmp{os.getpid()}"
    print(f"warm-starting the tiny model of seed {seed}: {sum(WARM_START_STEPS)} supervised steps, once "
          f"(cached in {path})", flush=True)
    model, tokenizer = load_model(build_tiny_model(tmp, seed=seed))
    threads = torch.get_num_threads()
    # float sums depend on the thread count: one thread makes the result a function of the seed
    torch.set_num_threads(1)
    try:
        acc = warm_start(model, tokenizer, seed, WARM_START, WARM_START_STEPS)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(tmp)
    with open(os.path.join(tmp, "warm_start.json"), "w") as f:
        json.dump({"seed": seed, "q": WARM_START, "steps": WARM_START_STEPS, "test_accuracy": acc}, f)
    if os.path.isdir(path):  # another process finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, path)
    print(f"warm start done in {time.perf_counter() - t0:.0f} s: expected test accuracy "
          + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()), flush=True)
    return path
