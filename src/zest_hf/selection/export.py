"""Handing a selection to trainers that freeze by parameter name (Axolotl, or any freeze list).

* ``"axolotl"``: Axolotl's ``unfrozen_parameters`` (the YAML list its Spectrum integration writes): one anchored
  regular expression per trainable parameter, ``^model\\.layers\\.3\\.mlp\\.down_proj\\.weight$``;
* ``"names"``: the parameter names, one a line.

Both list the selected projections' weights and biases and the head's parameters (``modules_to_save``), named as in
the transformers model's ``named_parameters()``.
"""

from __future__ import annotations

import re

from torch import nn

from ..modeling import base_model

__all__ = ["EXPORT_FORMATS", "selected_parameter_names", "export_selection"]

EXPORT_FORMATS = ("axolotl", "names")


def selected_parameter_names(model: nn.Module, config) -> list[str]:
    """Names of the parameters a resolved ``config`` trains, in the model's order."""
    config.require_resolved()
    base = base_model(model)
    owners = list(config.selected_modules)
    heads = list(config.modules_to_save or [])
    names = []
    for name, _ in base.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in owners or any(module == h or module.startswith(f"{h}.") or f".{h}." in f".{module}."
                                   for h in heads):
            names.append(name)
    return names


def export_selection(model: nn.Module, config, fmt: str) -> str:
    """The selection of a resolved ``config`` in ``fmt`` (see :data:`EXPORT_FORMATS`), as text."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    names = selected_parameter_names(model, config)
    if fmt == "names":
        return "\n".join(names) + "\n"
    header = (f"# ZEST selection ({len(config.selected_modules)} projections"
              f"{', head ' + ', '.join(config.modules_to_save) if config.modules_to_save else ''}), written by "
              "zest_hf: paste into an Axolotl config\n")
    return header + "unfrozen_parameters:\n" + "".join(f"- ^{re.escape(n)}$\n" for n in names)
