"""The packaged, really pretrained all-MiniLM-L6-v2 on a real BBC News batch."""

import pytest
import torch

import zest_hf
from zest_hf.workflow import prepare

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm_bbc():
    return prepare("minilm", "bbc_news", batch_size=8, max_length=64, seed=0)


def test_probe_packaged_minilm_on_bbc(minilm_bbc):
    model, batch = minilm_bbc.model, minilm_bbc.batch
    assert batch["labels"].max() < 5 and batch["input_ids"].shape == (8, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = zest_hf.probe(model, batch)
    assert len(r) == 36 and not r.nonfinite
    df = r.to_pandas()
    assert df.groupby("type").size().to_dict() == {t: 6 for t in ("q", "k", "v", "o", "up", "down")}
    # an untrained 5-way head starts near chance: loss close to ln 5
    assert abs(r.meta["loss"] - torch.log(torch.tensor(5.0)).item()) < 0.5
    # real pretrained weights are not the init distribution: BERT init has std 0.02 everywhere
    assert df["weight_std"].max() > 0.03
    # the head sits on the last block: gradients there are larger than in the first block, on average
    by_block = df.groupby("block")["grad_norm_mean"].mean()
    assert by_block[5] > by_block[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
