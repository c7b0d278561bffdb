"""The ``zest`` command line. ``zest <command> --help`` documents each command.

Building the parser imports nothing heavy (torch, transformers, peft load inside the command that needs them), so
``zest --help`` answers at once. A user error (a bad flag value, a model or predictor that is not there, a missing
data package) is one line on stderr and exit status 2; ``zest --debug <command>`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .defaults import DEFAULT_MODEL, DEFAULT_PREDICTOR, DEFAULT_TASK

DEFAULT_RANK_BY = "grad_norm"

# The commands a fine-tuner uses, and the ones that build and judge predictors (zest_hf.research).
USER_COMMANDS = ("probe", "rank", "select", "demo", "push-predictor")
RESEARCH_COMMANDS = ("contrib", "study", "train-predictor", "evaluate-predictor")


def _columns(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError(f"expected role=column pairs separated by commas, got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def _int_at_least(low: int):
    """An argparse ``type``: a whole number of at least ``low``, refused while parsing otherwise."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {n}")
        return n

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


_DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _dtype(text: str) -> str:
    return _DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())


def _add_model_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'minilm' or 'smollm2' (packaged, offline), a Hub model id, or a local path")
    p.add_argument("--task", default=DEFAULT_TASK,
                   help="a packaged task (bbc_news, twitter_sentiment, bigbench:<task>[/<subtask>]) or your data: a "
                        "jsonl/json/csv/parquet file, a dataset directory, or a datasets name")
    p.add_argument("--split", default="train",
                   help="split to draw the probe batch from: one of your data's, or train/validation/test of a "
                        "packaged task")
    p.add_argument("--columns", default=None, type=_columns,
                   help="column mapping of your data (not of a packaged task), e.g. text=review,label=stars or "
                        "prompt=question,completion=answer or messages=chat (default: those names)")
    p.add_argument("--head", default="auto", choices=["auto", "seq_cls", "multiple_choice", "causal_lm"])
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--max-length", type=_positive_int, default=128,
                   help="tokens per sequence (at most the model's max_position_embeddings)")
    p.add_argument("--seed", type=int, default=0, help="which training examples form the batch; head init")
    p.add_argument("--split-seed", type=int, default=0, help="train/validation/test split of the task")
    p.add_argument("--dtype", default=None, type=_dtype, choices=_DTYPES,
                   help="float32 (default), bfloat16, float16 (or fp32, bf16, fp16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")


def _cmd_probe(args) -> int:
    from .probe.run import probe
    from .plot import layer_heatmap, require_matplotlib
    from .workflow import prepare

    if args.plot:
        require_matplotlib("--plot")
    prep = prepare(args.model, args.task, head=args.head, batch_size=args.batch_size, max_length=args.max_length,
                   seed=args.seed, split_seed=args.split_seed, dtype=args.dtype, device=args.device,
                   split=args.split, columns=args.columns)
    metrics = args.metrics.split(",") if args.metrics not in ("default", "all") else args.metrics
    result = probe(prep.model, prep.batch, metrics, seed=args.seed, progress=not args.quiet)
    result.meta.update({"model": args.model, "task": prep.task.name, "head": prep.head,
                        "split_seed": args.split_seed, "max_length": args.max_length})
    if args.rank_by not in result.values:
        print(f"--rank-by {args.rank_by!r} is not a probed column; columns: {result.columns}", file=sys.stderr)
        return 2
    order = result.ranking(args.rank_by)
    show = [args.rank_by] + [c for c in ("snip", "fisher", "act_abs_mean") if c in result.values and c != args.rank_by]
    row_of = {r["name"]: i for i, r in enumerate(result.layers)}
    table = [[str(rank), name, str(result.layers[row_of[name]]["type"]), str(result.layers[row_of[name]]["block"])]
             + [f"{result.values[c][row_of[name]]:.4g}" for c in show]
             for rank, name in enumerate(order[: args.top], start=1)]
    loss = result.meta["loss"]
    print(f"# {len(result)} layers of {args.model} on {prep.task.name}, ranked by {args.rank_by} "
          f"(batch {list(prep.batch['input_ids'].shape)}, seed {args.seed}"
          + (f", loss {loss:.4f})" if loss is not None else ")"))
    print(_table(["rank", "name", "type", "block"] + show, table))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.to_json(args.out)
        print(f"wrote {args.out}")
    if args.plot:
        layer_heatmap(result.layers, result.column(args.rank_by), args.plot,
                      title=f"{args.rank_by}: {args.model} on {prep.task.name} (seed {args.seed})",
                      label=args.rank_by)
        print(f"wrote {args.plot}")
    return 0


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned plain-text columns (numbers line up), one line per row."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join(" ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [header, *rows])


def _cmd_contrib(args) -> int:
    from .research.budget import ContribBudget
    from .research.contrib import collect_contributions
    from .research.records import HEAD_ONLY

    budget = ContribBudget(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                           lr_layer=args.lr_layer, lr_head=args.lr_head, eval_examples=args.eval_examples)
    layers = None
    if args.layers:
        layers = [l for l in Path(args.layers).read_text().split() if l] if Path(args.layers).exists() else args.layers.split(",")
    rows = collect_contributions(args.model, args.task, args.out, seed=args.seed, budget=budget, layers=layers,
                                 split_seed=args.split_seed, device=args.device, progress=not args.quiet)
    rows = sorted(rows, key=lambda r: -r["score"])
    head = [r for r in rows if r["layer"] == HEAD_ONLY]
    print(f"# {len(rows)} runs of {args.model} on {args.task}, seed {args.seed}; head only: "
          f"{head[0]['val_acc']:.3f}" if head else "")
    for r in rows[: args.top]:
        print(f"{r['score']:.4f}  {r['val_loss']:.4f}  {r['layer']}")
    return 0


def _cmd_rank(args) -> int:
    from .plot import layer_heatmap, require_matplotlib
    from .selection.rank import rank
    from .workflow import prepare

    if args.plot:
        require_matplotlib("--plot")
    prep = prepare(args.model, args.task, head=args.head, batch_size=args.batch_size, max_length=args.max_length,
                   seed=args.seed, split_seed=args.split_seed, dtype=args.dtype, device=args.device,
                   split=args.split, columns=args.columns)
    ranking = rank(prep.model, prep.batch, args.predictor, revision=args.revision, seed=args.seed,
                   progress=not args.quiet)
    ranking.meta.update({"model": args.model, "task": prep.task.name, "seed": args.seed})
    print(f"# {len(ranking.layers)} layers of {args.model} on {prep.task.name}, ranked by predictor "
          f"{ranking.predictor} (batch seed {args.seed})")
    for i, r in enumerate(ranking.layers[: args.top], start=1):
        print(f"{i:4d}  {r['score']:+.4f}  {r['type']:5s} {r['block']:3d}  {r['name']}")
    if args.out:
        ranking.to_json(args.out)
        print(f"wrote {args.out}")
    if args.plot:
        layer_heatmap(ranking.layers, [r["score"] for r in ranking.layers], args.plot, label="predicted score",
                      title=f"ZEST predictor {ranking.predictor}: {args.model} on {prep.task.name}")
        print(f"wrote {args.plot}")
    return 0


def _cmd_select(args) -> int:
    """Selection as its own step: for DeepSpeed ZeRO-3 / FSDP runs, where the probe cannot run on a sharded model."""
    from .peft_method.config import ZestConfig
    from .selection.resolve import select
    from .targets import find_targets
    from .workflow import prepare

    config = ZestConfig(top_k=args.top_k, budget=args.budget, mode=args.mode, probe_seed=args.seed,
                        cost_weight=args.cost_weight, **({"predictor": args.predictor} if args.predictor else {}))
    prep = prepare(args.model, args.task, head=args.head, batch_size=args.batch_size,
                   max_length=args.max_length, seed=args.seed, split_seed=args.split_seed, dtype=args.dtype,
                   device=args.device, split=args.split, columns=args.columns)
    resolved = select(prep.model, prep.batch, config, progress=not args.quiet)
    info = resolved.selection_info
    info.update({"model": args.model, "task": prep.task.name, "head": prep.head, "batch_seed": args.seed,
                 "split_seed": args.split_seed, "max_length": args.max_length})
    sizes = {t.name: t.num_params for t in find_targets(prep.model, resolved.candidates, resolved.exclude_modules)}
    print(f"# ZEST selection ({resolved.mode} mode): {len(resolved.selected_modules)} of {info['num_candidates']} "
          f"layers of {args.model} on {prep.task.name}, predictor {info['predictor']} (batch "
          f"{info['probe']['batch_shape']}, seed {args.seed}); {info['selected_params']:,} of "
          f"{info['candidate_params']:,} candidate parameters; head {resolved.modules_to_save}")
    for i, name in enumerate(resolved.selected_modules, start=1):
        print(f"{i:4d}  {resolved.score_of(name):+.4f}  {sizes[name]:>12,}  {name}")
    Path(args.config_out).parent.mkdir(parents=True, exist_ok=True)
    resolved.to_json(args.config_out)
    print(f"wrote {args.config_out} (train with zest_hf.ZestConfig.from_json({str(args.config_out)!r}): no probe)")
    if args.export:
        from .selection.export import export_selection
        from .serialization import write_atomic

        out = args.export_out or {"axolotl": "zest_unfrozen_parameters.yaml", "names": "zest_parameters.txt"}[
            args.export]
        write_atomic(out, export_selection(prep.model, resolved, args.export))
        print(f"wrote {out} ({args.export} format)")
    return 0


def _cmd_push(args) -> int:
    from .predictor.hub import push_predictor

    print(push_predictor(args.directory, args.repo_id, private=args.private, revision=args.revision))
    return 0


def _cmd_train_predictor(args) -> int:
    from .metrics import default_columns
    from .research.evaluation import load_model_tasks
    from .predictor.card import write_card
    from .predictor.train import train_predictor

    data = load_model_tasks(args.data)
    if args.model_filter:
        data = [d for d in data if d.model == args.model_filter]
    if args.family:
        from .predictor.family import family_of

        data = [d for d in data if family_of(d.layers) == args.family]
    if not data:
        raise SystemExit(f"zest train-predictor: no model-task in {args.data} matches --model-filter "
                         f"{args.model_filter!r} / --family {args.family!r}; "
                         f"`zest study --data {args.data}` lists them")
    metrics = [] if args.prior_only else (args.metrics.split(",") if args.metrics else default_columns())
    lacking = sorted({m for d in data for m in metrics if m not in d.values})
    if lacking:
        raise ValueError(f"--metrics names {lacking}, which the ground truth in {args.data} does not record; its "
                         f"columns: {sorted(data[0].values)}")
    if args.held_out and not Path(args.held_out).exists():
        raise FileNotFoundError(f"--held-out {args.held_out}: no such file (the held-out evaluation's "
                                "predictor_eval.md, written by zest evaluate-predictor)")
    pred = train_predictor(data, metrics, arch=args.arch, normalization=args.normalization, steps=args.steps,
                           depth_knots=args.depth_knots, seed=args.seed)
    pred.save_pretrained(args.out)
    held = Path(args.held_out).read_text() if args.held_out else ""
    write_card(args.out, pred, held_out=held)
    print(f"trained on {len(data)} model-tasks -> {args.out}")
    return 0


def _cmd_evaluate_predictor(args) -> int:
    from .research.evaluation import run_evaluation, run_learning_curve, run_signal_ablation

    if args.held_out and (args.signals or args.learning_curve):
        raise SystemExit("zest evaluate-predictor: --held-out applies to the held-out evaluation only, not to "
                         "--signals or --learning-curve; drop one of them")
    if args.signals:
        run_signal_ablation(args.data, args.out_dir, seed=args.seed)
        print((Path(args.out_dir) / "signal_ablation.md").read_text())
        return 0
    if args.learning_curve:
        run_learning_curve(args.data, args.out_dir, seed=args.seed)
        print((Path(args.out_dir) / "predictor_learning_curve.md").read_text())
        return 0
    held_out = [t.strip() for t in args.held_out.split(",")] if args.held_out else None
    run_evaluation(args.data, args.out_dir, seed=args.seed, held_out=held_out)
    print((Path(args.out_dir) / "predictor_eval.md").read_text())
    return 0


def _cmd_study(args) -> int:
    from .research.study import run_study

    res = run_study(args.data, args.out_dir)
    print(res["markdown"])
    print(f"wrote {Path(args.out_dir) / 'single_metric_taus.md'} and .png")
    return 0


def _cmd_demo(args) -> int:
    """The whole flow on the packaged default (MiniLM, BBC News): probe, rank, select, fine-tune, evaluate, save,
    reload."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(top_k=args.top_k, steps=args.steps, seed=args.seed, eval_examples=args.eval_examples,
                     max_examples=args.max_examples, **({"predictor": args.predictor} if args.predictor else {}))
    run_demo(args.out_dir, cfg)
    return 0


_HELP = {
    "probe": "one-batch zero-shot metrics for every candidate layer",
    "rank": "probe one batch and rank layers with a ZEST predictor",
    "select": "probe one batch, select the top-k layers, write the resolved ZestConfig (e.g. for ZeRO-3/FSDP)",
    "demo": "the whole flow, offline, on MiniLM and BBC News: probe, rank, select, fine-tune, save, reload",
    "push-predictor": "upload a predictor directory to the Hub",
    "contrib": "ground truth: fine-tune each layer alone (+ head) and record its score",
    "study": "Kendall tau of every single zero-shot metric vs the ground truth (Table 1)",
    "train-predictor": "fit a ZEST predictor on predictors/data and save it (Hub layout)",
    "evaluate-predictor": "leave-one-task-out / leave-one-model-out evaluation (Table 2)",
}


def _command_list() -> str:
    width = max(map(len, _HELP)) + 2

    def block(names):
        return "\n".join(f"  {n:<{width}}{_HELP[n]}" for n in names)

    return (f"commands:\n{block(USER_COMMANDS)}\n\nresearch commands (need the research extra: "
            f"pip install 'zest_hf[research]'):\n{block(RESEARCH_COMMANDS)}")


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .research.budget import ContribBudget

    budget, demo = ContribBudget(), DemoConfig()
    parser = argparse.ArgumentParser(prog="zest", description="ZEST: zero-shot sparse fine-tuning for Hugging Face "
                                     "models", epilog=_command_list(), formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>",
                                parser_class=argparse.ArgumentParser)

    def command(name):  # listed once, in the epilog's two groups
        return sub.add_parser(name, description=_HELP[name])

    p = command("probe")
    _add_model_task(p)
    p.add_argument("--metrics", default="default",
                   help="'default' (all but grasp), 'all', or a comma list such as snip,fisher,grad_norm")
    p.add_argument("--rank-by", default=DEFAULT_RANK_BY, help="column that orders the printed table and heatmap")
    p.add_argument("--top", type=int, default=20, help="rows to print")
    p.add_argument("--out", default=None, help="write the ProbeResult as JSON here")
    p.add_argument("--plot", default=None, help="write a blocks x projections heatmap PNG here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_probe)

    p = command("contrib")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL file; a rerun resumes it")
    p.add_argument("--steps", type=int, default=budget.steps)
    p.add_argument("--batch-size", type=int, default=budget.batch_size)
    p.add_argument("--max-length", type=int, default=budget.max_length)
    p.add_argument("--lr-layer", type=float, default=budget.lr_layer)
    p.add_argument("--lr-head", type=float, default=budget.lr_head)
    p.add_argument("--eval-examples", type=int, default=budget.eval_examples)
    p.add_argument("--layers", default=None, help="comma list of module names, or a file with one per line")
    p.add_argument("--device", default=None)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_contrib)

    p = command("rank")
    _add_model_task(p)
    p.add_argument("--predictor", default=None, help="bundled name (default), local directory, or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision of the predictor")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", default=None, help="ranking.json")
    p.add_argument("--plot", default=None, help="heatmap PNG of the predicted scores")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_rank)

    p = command("select")
    _add_model_task(p)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--top-k", type=int, default=None, help="train this many layers")
    size.add_argument("--budget", type=float, default=None,
                      help="train the best layers holding at most this fraction of the candidates' parameters")
    p.add_argument("--mode", default="full", choices=["full", "lora"],
                   help="train the selection in place, or LoRA on it")
    p.add_argument("--predictor", default=None,
                   help=f"bundled name (default {DEFAULT_PREDICTOR}), local directory, Hub id, or 'metric:<probe column>'")
    p.add_argument("--cost-weight", type=float, default=0.0,
                   help="trade predicted importance for a cheaper step: 0 is plain top-k; larger values keep the "
                        "selection in higher blocks so backward stops earlier (see README, cost-aware selection)")
    p.add_argument("--config-out", default="zest_config.json", help="where to write the resolved ZestConfig (JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--export", default=None, choices=["axolotl", "names"],
                   help="also write the selection for another trainer: 'axolotl' (its unfrozen_parameters YAML), "
                        "'names' (parameter names, one a line)")
    p.add_argument("--export-out", default=None, help="where --export writes (default zest_unfrozen_parameters.yaml "
                                                      "or zest_parameters.txt)")
    p.set_defaults(func=_cmd_select)

    p = command("push-predictor")
    p.add_argument("directory")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="branch to upload to (created if it does not exist)")
    p.set_defaults(func=_cmd_push)

    p = command("train-predictor")
    p.add_argument("--data", default="predictors/data")
    p.add_argument("--out", required=True)
    # defaults: the variant that won on held-out model-tasks (results/predictor_eval.md), the bundled one's
    p.add_argument("--arch", default="linear", choices=["linear", "mlp"])
    p.add_argument("--normalization", default="rank", choices=["rank", "zscore"])
    p.add_argument("--depth-knots", type=int, default=5,
                   help="knots of the prior's piecewise-linear depth profile (0: depth enters linearly only)")
    p.add_argument("--metrics", default=None, help="comma list of probe columns (default: every default column)")
    p.add_argument("--prior-only", action="store_true", help="data-free prior: type, depth, size only")
    p.add_argument("--model-filter", default=None, help="train on this model's data only")
    p.add_argument("--family", default=None, choices=["decoder", "other"],
                   help="train on one architecture family's data only (decoder: Llama-style, a gated MLP; other: the "
                        "rest); predictors/zest-decoder is --family decoder")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out", default=None, help="markdown file of held-out figures for the card")
    p.set_defaults(func=_cmd_train_predictor)

    p = command("evaluate-predictor")
    p.add_argument("--data", default="predictors/data")
    p.add_argument("--out-dir", default="results")
    p.add_argument("--seed", type=int, default=0)
    instead = p.add_mutually_exclusive_group()  # each is a report of its own
    instead.add_argument("--learning-curve", action="store_true",
                         help="instead: held-out tau against the number of training tasks (predictor_learning_curve.md)")
    instead.add_argument("--signals", action="store_true",
                         help="instead: what each signal outside the default probe adds over the prior "
                              "(signal_ablation.md)")
    p.add_argument("--held-out", default=None,
                   help="comma list of tasks or model/task keys: judge only these as held out (the rest still train); "
                        "use another --out-dir to keep the full report")
    p.set_defaults(func=_cmd_evaluate_predictor)

    p = command("study")
    p.add_argument("--data", default="predictors/data")
    p.add_argument("--out-dir", default="results")
    p.set_defaults(func=_cmd_study)

    p = command("demo")
    p.add_argument("--out-dir", default="out/demo")
    p.add_argument("--top-k", type=_positive_int, default=demo.top_k)
    p.add_argument("--steps", type=_positive_int, default=demo.steps)
    p.add_argument("--seed", type=int, default=demo.seed)
    p.add_argument("--eval-examples", type=_non_negative_int, default=demo.eval_examples,
                   help="first N test examples (0: all)")
    p.add_argument("--max-examples", type=int, default=None, help="seeded subset of the task (quick runs)")
    p.add_argument("--predictor", default=None, help=f"bundled name (default {DEFAULT_PREDICTOR}), directory or Hub id")
    p.set_defaults(func=_cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a person can fix from the message alone: bad values, missing files, models or packages."""
    from . import errors

    return (ValueError, OSError, ImportError, errors.NonFiniteError, errors.ZestTrainerError,
            errors.ZestAdapterError)


def main(argv=None) -> int:
    # Before transformers loads (nothing of zest_hf has imported it yet): every model load with a new task head
    # would otherwise print a "newly initialized" report.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # bitsandbytes (imported by peft when installed) logs a warning about an optional CPU kernel on import; the
    # command line only uses it in the zeroth-order mode, where its messages matter.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"zest {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
