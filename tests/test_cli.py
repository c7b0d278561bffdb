"""The `zest` command line on a tiny random model saved to disk (as a user's local checkpoint would be)."""

import json

import peft
import pytest
import torch
import transformers
from helpers import tiny_llama

import zest_hf
import zest_hf.rank
from zest_hf import ProbeResult, SelectionError, ZestConfig
from zest_hf.cli import main





def test_cli_probe_writes_json_and_heatmap(tiny_dir, tmp_path, capsys):
    out, png = tmp_path / "probe.json", tmp_path / "heat.png"
    rc = main(["probe", "--model", str(tiny_dir), "--task", "bbc_news", "--batch-size", "4", "--max-length", "32",
               "--metrics", "snip,grad_norm,activation", "--rank-by", "snip", "--out", str(out), "--plot", str(png),
               "--quiet"])
    assert rc == 0
    r = ProbeResult.from_json(out)
    assert len(r) == 12 and r.metrics == ["activation", "grad_norm", "snip"]
    assert r.meta["task"] == "bbc_news" and r.meta["batch_shape"] == [4, 32] and r.meta["seed"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    # the printed table is in ranking order: its first row is the JSON's best layer by snip
    first_row = [l for l in printed.splitlines() if l.strip().startswith("1 ")][0]
    assert r.ranking("snip")[0] in first_row


def test_cli_rejects_unknown_rank_column(tiny_dir, capsys):
    rc = main(["probe", "--model", str(tiny_dir), "--task", "bbc_news", "--batch-size", "2", "--max-length", "16",
               "--metrics", "snip", "--rank-by", "fisher", "--quiet"])
    assert rc == 2
    assert "fisher" in capsys.readouterr().err


def test_cli_same_seed_same_result(tiny_dir, tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"p{i}.json"
        main(["probe", "--model", str(tiny_dir), "--task", "bbc_news", "--batch-size", "3", "--max-length", "16",
              "--metrics", "snip", "--out", str(p), "--quiet", "--rank-by", "snip"])
        paths.append(p)
    a, b = (json.loads(p.read_text()) for p in paths)
    assert a["values"] == b["values"]


def test_cli_select_writes_a_resolved_config_that_trains_exactly_its_selection(tiny_dir, tmp_path, capsys,
                                                                              monkeypatch):
    out = tmp_path / "sel" / "zest_config.json"
    rc = main(["select", "--model", str(tiny_dir), "--task", "bbc_news", "--top-k", "3", "--batch-size", "4",
               "--max-length", "32", "--predictor", "metric:grad_norm", "--seed", "2", "--config-out", str(out)])
    assert rc == 0
    cfg = ZestConfig.from_json(out)
    assert cfg.is_resolved and cfg.top_k == 3 and len(cfg.selected_modules) == 3 and cfg.probe_seed == 2
    assert cfg.modules_to_save == ["classifier"] and cfg.selection_info["task"] == "bbc_news"
    assert cfg.selection_scores == sorted(cfg.selection_scores, reverse=True)
    printed = capsys.readouterr().out
    rows = [l.split() for l in printed.splitlines() if l.strip()[:1].isdigit()]
    assert [r[-1] for r in rows] == cfg.selected_modules and str(out) in printed

    # the training step: no probe for a resolved config; exactly the selection and the head train
    monkeypatch.setattr(zest_hf.rank, "rank", lambda *a, **k: pytest.fail("a resolved config probed again"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=5,
                                                                       ignore_mismatched_sizes=True)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    peft_model = peft.get_peft_model(model, ZestConfig.from_json(out))
    selected = {f"{m}.{p}" for m in cfg.selected_modules for p in ("weight", "bias")}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert {n.removeprefix("base_model.model.").replace(".zest_layer.default", "") for n in trainable} == (
        selected | {"classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"})
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 1000, (4, 16), generator=g), "labels": torch.tensor([0, 1, 2, 3])}
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    peft_model(**batch).loss.backward()
    opt.step()
    assert {n for n, p in params.items() if not torch.equal(p, before[n])} == selected

    # the same file for another model is refused before that model or its Trainer changes
    llama = tiny_llama()
    trainer = transformers.Trainer(model=llama, args=transformers.TrainingArguments(
        output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True))
    with pytest.raises(SelectionError, match="do not exist in LlamaForCausalLM"):
        zest_hf.prepare_trainer(trainer, ZestConfig.from_json(out))
    assert trainer.model is llama and all(p.requires_grad for p in llama.parameters())


def test_cli_select_refuses_bad_sizes(tiny_dir, capsys):
    rc = main(["select", "--model", str(tiny_dir), "--task", "bbc_news", "--top-k", "40", "--batch-size", "2",
               "--max-length", "16", "--predictor", "metric:grad_norm", "--config-out", "unused.json"])
    assert rc == 2 and "top_k=40 but the model has only 12" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["select", "--model", str(tiny_dir), "--top-k", "2", "--budget", "0.1"])


def test_cli_select_cost_weight_keeps_the_selection_high_so_backward_stops_early(tiny_dir, tmp_path, capsys):
    common = ["select", "--model", str(tiny_dir), "--task", "bbc_news", "--top-k", "3", "--batch-size", "4",
              "--max-length", "32", "--predictor", "metric:-weight_std", "--seed", "0"]
    assert main(common + ["--config-out", str(tmp_path / "plain.json")]) == 0
    assert main(common + ["--cost-weight", "10", "--config-out", str(tmp_path / "cheap.json")]) == 0
    plain, cheap = (ZestConfig.from_json(tmp_path / f) for f in ("plain.json", "cheap.json"))
    blocks = {t.name: t.block for t in zest_hf.find_targets(
        transformers.AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=5,
                                                                        ignore_mismatched_sizes=True))}
    top = max(blocks.values())
    # a heavy cost weight keeps all three in the top block: backward crosses one block of two
    assert cheap.cost_weight == 10 and {blocks[n] for n in cheap.selected_modules} == {top}
    assert cheap.selection_info["backward_cost"] == 0.5
    # plain top-k by this metric reaches lower (otherwise the test would not tell the two apart)
    assert min(blocks[n] for n in plain.selected_modules) < top
    assert main(common + ["--cost-weight", "-1", "--config-out", str(tmp_path / "bad.json")]) == 2
    assert "cost_weight must be a number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_a_missing_matplotlib_is_named_before_the_probe_runs(tiny_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    out = tmp_path / "probe.json"
    rc = main(["probe", "--model", str(tiny_dir), "--task", "bbc_news", "--batch-size", "2", "--max-length", "16",
               "--out", str(out), "--plot", str(tmp_path / "h.png")])
    assert rc == 2 and "pip install 'zest_hf[plot]'" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_a_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["rank", "--model", str(tmp_path / "no_such_model"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zest rank: ") and "Traceback" not in err
    with pytest.raises(OSError):
        main(["--debug", "rank", "--model", str(tmp_path / "no_such_model"), "--quiet"])


def test_an_unknown_model_is_one_line_naming_the_packaged_models(capsys):
    assert main(["select", "--model", "no-such-org/no-such-model", "--top-k", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "minilm, smollm2" in err and "HF_HUB_OFFLINE=1" in err


def test_auto_head_of_a_decoder_on_a_classification_task_is_its_lm_head(tiny_llama_dir, tmp_path):
    out = tmp_path / "cfg.json"
    assert main(["select", "--model", str(tiny_llama_dir), "--task", "bbc_news", "--top-k", "2", "--batch-size", "2",
                 "--max-length", "32", "--predictor", "metric:grad_norm", "--config-out", str(out)]) == 0
    cfg = ZestConfig.from_json(out)
    assert cfg.modules_to_save == [] and cfg.selection_info["head"] == "causal_lm"


def test_train_predictor_family_keeps_one_familys_ground_truth(tmp_path):
    """`zest train-predictor --family decoder` (how predictors/zest-decoder is made) trains on decoders' model-tasks
    only, and a filter that leaves nothing stops before anything is written."""
    from pathlib import Path

    from zest_hf.predictor import ZestPredictor

    data = Path(__file__).resolve().parents[1] / "predictors" / "data"
    rc = main(["train-predictor", "--data", str(data), "--family", "decoder", "--steps", "5",
               "--out", str(tmp_path / "dec")])
    tasks = ZestPredictor.from_pretrained(tmp_path / "dec").trained_on["model_tasks"]
    assert rc == 0 and tasks and all(t.startswith("smollm2/") for t in tasks)
    with pytest.raises(SystemExit, match="no model-task .* --family 'decoder'"):
        main(["train-predictor", "--data", str(data), "--family", "decoder", "--model-filter", "minilm",
              "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def _no_model_load(monkeypatch):
    import zest_hf.workflow

    monkeypatch.setattr(zest_hf.workflow, "load_model", lambda *a, **k: pytest.fail("the model loaded"))


def test_a_packaged_task_takes_split_and_refuses_columns(tiny_dir, tmp_path, monkeypatch, capsys):
    from zest_hf.tasks import make_batch
    from zest_hf.workflow import prepare

    kw = {"batch_size": 3, "max_length": 16, "seed": 0}
    val = prepare(str(tiny_dir), "bbc_news", split="validation", **kw)
    want = make_batch(val.task, val.tokenizer, model_kind="seq_cls", split="validation", **kw)
    train = make_batch(val.task, val.tokenizer, model_kind="seq_cls", split="train", **kw)
    assert val.batch["input_ids"].equal(want["input_ids"]) and not val.batch["input_ids"].equal(train["input_ids"])

    _no_model_load(monkeypatch)
    common = ["probe", "--model", str(tiny_dir), "--task", "bbc_news", "--max-length", "16", "--quiet",
              "--out", str(tmp_path / "p.json")]
    assert main(common + ["--split", "dev"]) == 2
    assert "no split 'dev'; its splits: ['train', 'validation', 'test']" in capsys.readouterr().err
    assert main(common + ["--columns", "text=body,label=topic"]) == 2
    assert "--columns" in capsys.readouterr().err and not (tmp_path / "p.json").exists()


def test_a_max_length_beyond_the_models_positions_is_refused_before_it_loads(tiny_dir, monkeypatch, capsys):
    _no_model_load(monkeypatch)  # the tiny BERT has 64 positions
    assert main(["probe", "--model", str(tiny_dir), "--task", "bbc_news", "--max-length", "65", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_length=65" in err and "64 tokens (config.max_position_embeddings)" in err and "--max-length 64" in err


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-2"), ("--max-length", "0"),
                                        ("--dtype", "bf17")])
def test_bad_flag_values_are_refused_while_parsing(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["probe", "--model", "no-model-is-read", flag, value])
    assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_dtype_takes_torch_names_and_short_aliases():
    from zest_hf.cli import build_parser

    given = ("bf16", "fp16", "fp32", "bfloat16", "float16")
    got = [build_parser().parse_args(["probe", "--dtype", v]).dtype for v in given]
    assert got == ["bfloat16", "float16", "float32", "bfloat16", "float16"]


@pytest.mark.parametrize("revision", [None, "dev"])
def test_push_predictor_creates_the_branch_it_uploads_to(revision, monkeypatch, capsys):
    import types

    import huggingface_hub

    from zest_hf.predictor.hub import bundled_predictors

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append(("repo", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda self, *a, **k: calls.append(("branch", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: calls.append(("upload", (), k))
                        or types.SimpleNamespace(commit_url="https://hf.co/me/pred/commit/1"))
    directory = str(next(iter(bundled_predictors().values())))
    assert main(["push-predictor", directory, "me/pred"] + (["--revision", revision] if revision else [])) == 0
    assert "commit/1" in capsys.readouterr().out
    if revision is None:
        assert [c[0] for c in calls] == ["repo", "upload"]
    else:
        assert [c[0] for c in calls] == ["repo", "branch", "upload"]
        _, args, kw = calls[1]
        assert args == ("me/pred",) and kw["branch"] == "dev" and kw["exist_ok"] is True
    assert calls[-1][2]["revision"] == revision and calls[-1][2]["repo_id"] == "me/pred"


def test_a_nonfinite_probe_and_bad_research_flags_are_one_line_errors(tiny_dir, tmp_path, capsys):
    from pathlib import Path

    # grad_snr needs two rows to compare: on one it is NaN, and ranking by it is refused in one line
    assert main(["rank", "--model", str(tiny_dir), "--task", "bbc_news", "--predictor", "metric:grad_snr",
                 "--batch-size", "1", "--max-length", "16", "--quiet"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the model-loading progress bar
    assert last.startswith("zest rank: ") and "grad_snr" in last and "Traceback" not in err
    data = Path(__file__).resolve().parents[1] / "predictors" / "data"
    for extra, words in ((["--metrics", "snip,bogus"], "['bogus']"),
                         (["--held-out", str(tmp_path / "missing.md")], "no such file")):
        assert main(["train-predictor", "--data", str(data), "--steps", "2", "--out", str(tmp_path / "p"),
                     *extra]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "p").exists()  # refused before anything is trained or written
    with pytest.raises(SystemExit):  # two reports asked for at once
        main(["evaluate-predictor", "--signals", "--learning-curve"])
    for flag, value in (("--eval-examples", "-1"), ("--steps", "0"), ("--top-k", "0")):
        with pytest.raises(SystemExit):
            main(["demo", flag, value])
