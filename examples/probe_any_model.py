"""Probe any transformers model on one batch of a task and save the metric table and a heatmap.

    python examples/probe_any_model.py                                   # packaged MiniLM on BBC News, offline
    python examples/probe_any_model.py --model smollm2 --task bigbench:fact_checker/fever
    python examples/probe_any_model.py --model bert-base-uncased          # any Hub id (needs the Hub)
"""

import argparse

import zest_hf
from zest_hf.plot import layer_heatmap
from zest_hf.workflow import prepare


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="bbc_news")
    ap.add_argument("--metric", default="snip_mean", help="column for the heatmap")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    prep = prepare(args.model, args.task, batch_size=16, max_length=128, seed=args.seed)
    result = zest_hf.probe(prep.model, prep.batch, progress=True, seed=args.seed)
    df = result.to_pandas().sort_values(args.metric, ascending=False)
    print(df[["name", "type", "block", args.metric, "grad_norm", "fisher_mean"]].head(10).to_string(index=False))
    result.to_json("probe.json")
    layer_heatmap(result.layers, result.column(args.metric), "probe_heatmap.png",
                  title=f"{args.metric}: {args.model} on {prep.task.name} (seed {args.seed})", label=args.metric)
    print("wrote probe.json and probe_heatmap.png")


if __name__ == "__main__":
    main()
