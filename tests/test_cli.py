"""The `zest` command line on a tiny random model saved to disk (as a user's local checkpoint would be)."""

import json


from zest_hf import ProbeResult
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
