"""`zest select --export`: the selection as Axolotl's unfrozen_parameters or a plain list, checked against the model."""

import re

import pytest
import yaml

from helpers import tiny_bert_cls, tiny_llama
from zest_hf import ZestConfig
from zest_hf.cli import main
from zest_hf.selection.export import export_selection


def _cfg(model, picks, head):
    return ZestConfig(selected_modules=[n for n, _ in model.named_modules() if n.endswith(picks)],
                      modules_to_save=head)


@pytest.mark.parametrize("build, picks, head", [
    (tiny_llama, ("layers.1.mlp.down_proj", "layers.0.self_attn.q_proj"), []),
    (tiny_bert_cls, ("layer.1.output.dense", "layer.0.attention.self.value"), ["classifier"]),
])
def test_axolotl_and_names_exports_match_exactly_the_trained_parameters(build, picks, head):
    model = build()
    cfg = _cfg(model, picks, head)
    wanted = {n for n, _ in model.named_parameters()
              if n.rsplit(".", 1)[0] in cfg.selected_modules or n.split(".")[0] in head}
    patterns = yaml.safe_load(export_selection(model, cfg, "axolotl"))["unfrozen_parameters"]
    assert all(p.startswith("^") and p.endswith("$") for p in patterns)
    # Axolotl unfreezes a parameter when any pattern matches its name
    matched = {n for n, _ in model.named_parameters() if any(re.match(p, n) for p in patterns)}
    assert matched == wanted and len(patterns) == len(wanted)
    assert set(export_selection(model, cfg, "names").split()) == wanted


def test_an_unknown_export_format_is_refused(capsys):
    with pytest.raises(ValueError, match="unknown export format 'deepspeed'; formats: axolotl, names"):
        export_selection(tiny_llama(), ZestConfig(selected_modules=["model.layers.0.mlp.up_proj"]), "deepspeed")
    with pytest.raises(SystemExit) as e:
        main(["select", "--top-k", "2", "--export", "deepspeed"])
    assert e.value.code == 2 and "invalid choice: 'deepspeed'" in capsys.readouterr().err


def test_zest_select_writes_the_export_beside_the_config(tiny_llama_dir, tmp_path):
    out = tmp_path / "unfrozen.yaml"
    assert main(["select", "--model", str(tiny_llama_dir), "--task", "bbc_news", "--top-k", "3", "--batch-size", "2",
                 "--max-length", "32", "--predictor", "metric:grad_norm", "--config-out", str(tmp_path / "c.json"),
                 "--export", "axolotl", "--export-out", str(out)]) == 0
    cfg = ZestConfig.from_json(tmp_path / "c.json")
    patterns = yaml.safe_load(out.read_text())["unfrozen_parameters"]
    assert {p[1:-1].replace("\\", "").rsplit(".", 1)[0] for p in patterns} == set(cfg.selected_modules)
