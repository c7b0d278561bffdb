"""The package's shape: what `import zest_hf` loads, which module may import which, and each helper defined once."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "zest_hf"
HEAVY = ("torch", "transformers", "peft", "pandas", "scipy", "matplotlib", "bitsandbytes")


def _run(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip() + ("\n" + out.stderr.strip() if out.stderr.strip() else "")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text())
    return out


def _top_level_imports(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Modules imported at module level (not inside functions), resolved to absolute names."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("zest_hf")}


def test_import_zest_hf_loads_no_heavy_library_and_prints_nothing():
    out = _run("import sys, zest_hf; print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,))
    assert out == "[]"


def test_the_command_line_parser_loads_no_heavy_library():
    out = _run("import sys; from zest_hf.cli import build_parser; build_parser(); "
               "print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,))
    assert out == "[]"


def test_public_names_resolve_and_probe_is_the_function_after_the_stage_package_loads():
    out = _run("import zest_hf, zest_hf.probe.result; import zest_hf.probe as p; "
               "print(callable(zest_hf.probe), zest_hf.probe.__module__, sorted(zest_hf.__all__) == "
               "sorted(n for n in zest_hf.__all__ if getattr(zest_hf, n) is not None))")
    assert out.splitlines()[0] == "True zest_hf.probe.run True"


def test_peft_learns_zest_when_imported_after_zest_hf_and_before():
    after = _run("import zest_hf, peft; print('ZEST' in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING)")
    before = _run("import peft, zest_hf; print('ZEST' in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING)")
    # peft alone does not know it: the registration is zest_hf's doing
    alone = _run("import peft; print('ZEST' in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING)")
    assert after.splitlines()[0] == before.splitlines()[0] == "True" and alone.splitlines()[0] == "False"


@pytest.mark.parametrize("old, new", [
    ("zest_hf.contrib", "zest_hf.research.contrib"), ("zest_hf.study", "zest_hf.research.study"),
    ("zest_hf.evaluation", "zest_hf.research.evaluation"), ("zest_hf.blocks", "zest_hf.research.blocks"),
    ("zest_hf.rank", "zest_hf.selection.rank"), ("zest_hf.hub", "zest_hf.predictor.hub"),
    ("zest_hf.callback", "zest_hf.train.callback"), ("zest_hf.finetune", "zest_hf.train.finetune"),
    ("zest_hf.loss", "zest_hf.probe.batch"), ("zest_hf.heads", "zest_hf.modeling"),
])
def test_a_moved_module_is_the_same_object_under_its_old_path(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)


def test_no_module_imports_the_package_init():
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                # `from . import x` in a module directly under zest_hf, `from .. import x` one level down, or
                # `from zest_hf import x` read the package __init__, unless x is a submodule
                is_pkg = (PKG.parent / name.replace(".", "/") / "__init__.py").exists()
                depth = name.count(".") + (1 if is_pkg else 0)  # packages a relative import climbs to reach zest_hf
                top = (node.level and not node.module and node.level == depth) or node.module == "zest_hf"
                if top and name != "zest_hf":
                    subs = {a.name for a in node.names if not (PKG / a.name).exists()
                            and not (PKG / f"{a.name}.py").exists()}
                    if subs:
                        offenders.append((name, sorted(subs)))
    assert offenders == []


def test_no_import_cycle_between_modules():
    mods = _modules()
    graph = {}
    for name, tree in mods.items():
        is_pkg = (PKG.parent / name.replace(".", "/") / "__init__.py").exists()
        graph[name] = {m for m in _top_level_imports(name, tree, is_pkg) if m in mods and m != name}
    # a package importing its own submodules is how a package exposes them, not a cycle; a submodule importing
    # its parent package is (it only works by line order)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert cycles == []


@pytest.mark.parametrize("needle, home", [
    ("get_base_model", "zest_hf/modeling.py"),          # unwrapping a PeftModel
    ('"ForCausalLM"', "zest_hf/modeling.py"),            # is this a causal LM
    ("next(model.parameters()).device", None),          # device lookup: modeling.device_of only
    ('= "__head__"', "zest_hf/research/records.py"),     # the head-only baseline's name
    ('= "zest-universal"', "zest_hf/predictor/family.py"),  # the pooled predictor
    ('= "zest-decoder"', "zest_hf/predictor/family.py"),  # the decoders' predictor
    ('DEFAULT_PREDICTOR = ', "zest_hf/defaults.py"),      # the default predictor
    ("saved_grads = [p.grad", "zest_hf/probe/state.py"), # borrowing a model and giving it back
    ("isinstance(top_k, bool)", None),                  # bool-is-not-an-int: validation.check_int only
])
def test_each_shared_helper_is_defined_once(needle, home):
    where = sorted(str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py") if needle in p.read_text())
    assert where == ([home] if home else [])


def test_research_is_not_imported_by_the_plugin():
    for name, tree in _modules().items():
        if name.startswith(("zest_hf.research", "zest_hf.cli", "zest_hf._hooks")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any("research" in n for n in names), f"{name} imports the research tools"
