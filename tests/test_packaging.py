"""The wheel: every subpackage is listed, the bundled predictors ship inside it, the ground-truth data does not."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


@pytest.mark.integration
def test_wheel_bundles_predictors_and_resolves_the_default_offline(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("zest_hf-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    bundled = sorted(p.name for p in (ROOT / "predictors").iterdir() if (p / "config.json").is_file())
    assert bundled, "no predictor in predictors/"
    for name in bundled:
        for f in ("config.json", "model.safetensors", "README.md"):
            assert f"zest_hf/_predictors/{name}/{f}" in names
    assert not [n for n in names if "/data/" in n or n.endswith(".jsonl")], "ground-truth data must stay out"
    # Installed alone (no source checkout beside it), the default ("auto") still resolves, from the wheel, to each
    # family's predictor.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import zest_hf.hub as h; b = h.bundled_predictors(); "
            "print(h.DEFAULT_PREDICTOR, b[h.resolve_name(None, ['q', 'v'])], b[h.resolve_name(None, ['gate', 'up'])]); "
            "h.load_predictor(); h.load_predictor(layers=['gate'])")
    env = {**os.environ, "PYTHONPATH": str(target), "ZEST_HF_PREDICTORS": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.strip()
    bundled_dir = target / "zest_hf" / "_predictors"
    assert out == f"auto {bundled_dir / 'zest-universal'} {bundled_dir / 'zest-decoder'}"
