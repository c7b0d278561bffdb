"""The research tools behind zest_hf's predictors: ground truth, the single-metric study, predictor evaluation.

Not part of the plugin a user imports: ``import zest_hf`` never imports this package, and it needs the
``research`` extra (``pip install "zest_hf[research]"``: pandas, scipy, tabulate, matplotlib).

* :mod:`.records` - the JSONL records the tools append and read (resumable, torn-line safe);
* :mod:`.blocks` - runs a model block by block from cached block inputs (a layer's run skips the blocks below it);
* :mod:`.contrib` - ground truth: fine-tune each candidate layer alone and record its validation score;
* :mod:`.study` - Kendall tau of every single zero-shot metric against the ground truth (the paper's Table 1);
* :mod:`.evaluation` - held-out evaluation of predictor variants (Table 2), the learning curve, the signal ablation;
* :mod:`.baselines` - selections ZEST is judged against (random, matched on parameter count);
* :mod:`.stats` - paired differences of two methods with a bootstrap interval over task x seed;
* :mod:`.cost` - a model of one training step's FLOPs, time and memory per method, from the config.
"""
