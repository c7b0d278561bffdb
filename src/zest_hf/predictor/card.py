"""The model card a predictor is saved with: huggingface_hub's template mechanism, filled from the predictor.

``ZestPredictor`` hands :data:`CARD_TEMPLATE` to ``PyTorchModelHubMixin`` (its ``model_card_template``), and
``ZestPredictor.generate_model_card`` fills it, so ``save_pretrained`` and ``push_to_hub`` write this card.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CARD_TEMPLATE", "write_card"]

CARD_TEMPLATE = """---
{{ card_data }}
---

# ZEST predictor

Ranks the linear projections of a transformer by how much fine-tuning each alone would help, from one-batch
zero-shot metrics (zest_hf >= {{ min_version }}; written by zest_hf {{ version }}).

```python
from zest_hf.rank import rank
ranking = rank(model, batch, predictor="<this repo id or directory>")
```

- Architecture: `{{ arch }}`{{ arch_note }}, features normalised per model-task by
  `{{ normalization }}`, data-free prior features: {{ prior }}{{ knots_note }}.
- Metric set (probe columns): {{ metrics }}.
- Trained with RankNet's pairwise logistic loss on pairs of layers from the same model-task, seed
  {{ seed }}, {{ steps }} steps.
- Training data ({{ num_tasks }} model-tasks): {{ tasks }}. Ground truth: validation accuracy after fine-tuning
  one layer + head (see zest_hf's predictors/data/README.md).

## Held-out figures

{{ held_out }}

{{ notes }}
"""


def write_card(directory: str | os.PathLike, predictor, *, held_out: str = "", notes: str = "") -> Path:
    """Write ``predictor``'s card (with held-out figures and notes) to ``directory/README.md``."""
    path = Path(directory) / "README.md"
    predictor.generate_model_card(held_out=held_out, notes=notes).save(path)
    return path
