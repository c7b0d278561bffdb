"""One JSON contract for every object zest_hf writes as JSON (zest_hf.serialization), tested once for all of them."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from zest_hf import ProbeResult, ZestConfig
from zest_hf.selection.rank import Ranking
from zest_hf.sparse_zo.config import SparseZOConfig


def _probe_result(n=3):
    layers = [{"name": f"m.layers.{i}.q_proj", "type": "q", "block": i, "depth": i / 2, "num_params": 16,
               "in_features": 4, "out_features": 4} for i in range(n)]
    return ProbeResult(layers=layers, values={"snip": [1.0, float("nan"), 3.0]}, metrics=["snip"],
                       meta={"seed": 0}, nonfinite=[("m.layers.1.q_proj", "snip")])


OBJECTS = {
    "ProbeResult": _probe_result,
    "Ranking": lambda: Ranking(layers=[{"name": "a", "score": 1.0}], predictor="metric:snip", meta={"seed": 1}),
    "ZestConfig": lambda: ZestConfig(selected_modules=["a.q_proj"], selection_scores=[0.5], modules_to_save=["score"]),
    "SparseZOConfig": lambda: SparseZOConfig(percent=0.5, zest_top_k=3),
}


def _same(a, b):
    return json.loads(a.to_json()) == json.loads(b.to_json())


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_to_json_and_from_json_roundtrip_through_a_path_and_through_text(kind, tmp_path):
    obj = OBJECTS[kind]()
    cls = type(obj)
    path = tmp_path / "obj.json"
    text = obj.to_json(path)
    assert path.read_text() == text
    assert _same(cls.from_json(path), obj) and _same(cls.from_json(str(path)), obj) and _same(cls.from_json(text), obj)
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, readable by any parser


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_an_unknown_key_is_refused_by_name(kind, tmp_path):
    obj = OBJECTS[kind]()
    d = json.loads(obj.to_json())
    d["from_the_future"] = 1
    with pytest.raises(ValueError, match=r"unknown .* keys \['from_the_future'\].*newer zest_hf"):
        type(obj).from_json(json.dumps(d))


@pytest.mark.parametrize("kind", sorted(OBJECTS))
@pytest.mark.parametrize("content, match", [("", "not valid JSON"), ("{", "not valid JSON"),
                                            ("[1, 2]", "holds a JSON list")])
def test_a_malformed_file_is_a_clear_error_naming_it(kind, content, match, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        type(OBJECTS[kind]()).from_json(path)
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="no .* file at"):
        type(OBJECTS[kind]()).from_json(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a directory; give the path of the .* JSON file"):
        type(OBJECTS[kind]()).from_json(tmp_path)


def test_written_files_get_the_mode_a_plain_write_gives(tmp_path):
    from zest_hf.serialization import atomic_target, write_atomic

    old = os.umask(0o022)
    try:
        OBJECTS["ZestConfig"]().to_json(tmp_path / "new.json")
        with atomic_target(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
        (tmp_path / "kept.json").write_text("{}")
        os.chmod(tmp_path / "kept.json", 0o640)
        write_atomic(tmp_path / "kept.json", "{}")  # an existing file keeps its own mode
        os.umask(0o077)
        write_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"new.json": 0o644, "new.bin": 0o644, "kept.json": 0o640, "private.json": 0o600}


WRITER = """
import sys
from zest_hf.serialization import write_atomic
path, i = sys.argv[1], 0
while True:
    i += 1
    write_atomic(path, '{"i": %d, "pad": "%s"}' % (i, "x" * (1 << 20)))
"""


def test_a_writer_killed_mid_write_leaves_a_whole_file(tmp_path):
    path = tmp_path / "out.json"
    for trial in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(0.6 + 0.13 * trial)  # a different moment of the write loop each time
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if path.exists():
            assert json.loads(path.read_text())["pad"] == "x" * (1 << 20)
    assert path.exists(), "the writer never finished one file: the test proved nothing"
    assert not [p for p in tmp_path.iterdir() if p.name != "out.json" and not p.name.endswith(".tmp")]


PREDICTOR_WRITER = """
import sys, torch
from zest_hf.predictor import ZestPredictor
path, i = sys.argv[1], 0
while True:
    i += 1
    p = ZestPredictor(metrics=["m%d" % k for k in range(400)], hidden=256, trained_on={"i": i})
    with torch.no_grad():
        for w in p.parameters():
            w.fill_(i)
    p.save_pretrained(path)
    print(i, flush=True)
"""

def _kill_repeatedly(script, path, check):
    """Let the writer finish one save, then kill it at a different moment of its save loop each time: every kill
    must leave a whole save behind (a writer that removes or rewrites a file in place leaves it missing or torn)."""
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline(), "the writer died before its first save"
            time.sleep(0.05 + 0.17 * trial)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert check(path), f"trial {trial}: the kill left no whole save behind"


def test_a_predictor_writer_killed_mid_save_leaves_a_loadable_predictor(tmp_path):
    from zest_hf.predictor import load_predictor

    def check(path):
        if not (path / "config.json").exists() and not (path / "model.safetensors").exists():
            return False
        p = load_predictor(path)  # both files whole, and matching each other's shapes
        i = p.trained_on["i"]
        # each file is one save's; the weights move in first, so they are the config's save or the next one
        assert {float(v) for w in p.parameters() for v in w.detach().flatten()[:3]} <= {float(i), float(i + 1)}
        return True

    _kill_repeatedly(PREDICTOR_WRITER, tmp_path / "pred", check)


def _sparse_model():
    import torch
    import transformers

    from zest_hf.sparse_zo import attach_sparse
    from zest_hf.sparse_zo.mask import SensitiveMask

    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4)
    model = transformers.LlamaForCausalLM(cfg)
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if n.endswith("_proj")}
    mask = SensitiveMask(indices={n: torch.arange(0, s[0] * s[1], 7) for n, s in shapes.items()}, shapes=shapes,
                         percent=14.0)
    return attach_sparse(model, mask, quantize=None), mask


@pytest.mark.parametrize("kind", ["sparse delta", "sensitive mask"])
def test_a_safetensors_writer_that_dies_half_way_leaves_the_old_file(kind, tmp_path, monkeypatch):
    import safetensors.torch

    from zest_hf.sparse_zo import SparseZOConfig, read_sparse_delta, save_sparse_delta
    from zest_hf.sparse_zo.mask import SensitiveMask

    model, mask = _sparse_model()
    if kind == "sparse delta":
        path = tmp_path / "sparse_delta.safetensors"
        save, read = (lambda: save_sparse_delta(model, tmp_path, SparseZOConfig(quantize=None))), read_sparse_delta
    else:
        path = tmp_path / "mask.safetensors"
        save, read = (lambda: mask.save(path)), SensitiveMask.load
    save()
    before = path.read_bytes()
    real = safetensors.torch.save_file

    def dies_half_way(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])  # what a process killed mid-write leaves
        raise OSError("killed")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        save()
    assert path.read_bytes() == before
    read(path)  # still whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["sparse_delta.safetensors", "sparse_zo_config.json"] if kind == "sparse delta" else ["mask.safetensors"])


@pytest.mark.parametrize("kind", ["sparse delta", "sensitive mask"])
def test_a_torn_sparse_zo_file_is_refused_naming_the_file(kind, tmp_path):
    from zest_hf.sparse_zo import SparseZOConfig, read_sparse_delta, save_sparse_delta
    from zest_hf.sparse_zo.mask import SensitiveMask

    model, mask = _sparse_model()
    if kind == "sparse delta":
        save_sparse_delta(model, tmp_path, SparseZOConfig(quantize=None))
        path, read = tmp_path / "sparse_delta.safetensors", read_sparse_delta
    else:
        path, read = tmp_path / "mask.safetensors", SensitiveMask.load
        mask.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated by something outside zest_hf (a copy cut short)
    with pytest.raises(ValueError, match=f"{path.name} is not a readable safetensors file.*is not a zest_hf {kind}"):
        read(path)
