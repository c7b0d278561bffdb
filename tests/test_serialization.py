"""One JSON contract for every object zest_hf writes as JSON (zest_hf.serialization), tested once for all of them."""

import json
import os
import signal
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
