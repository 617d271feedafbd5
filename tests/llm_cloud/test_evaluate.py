import numpy as np
import pytest
import torch

from llm_cloud.engines import make_engine
from llm_cloud.evaluate import evaluate_engine
from llm_cloud.model import ItemTokenLM
from lsc4rec.data import TemporalSplit


def reference_ndcg10(lm: ItemTokenLM, histories, targets, k: int) -> float:
    """Independent of the list path: full log-probs, history masked, the target's rank counted directly."""
    all_scores = lm.item_log_probs([h.tolist() for h in histories])
    total = 0.0
    for scores, history, target in zip(all_scores, histories, targets, strict=True):
        scores[torch.tensor(history) - 1] = -torch.inf
        rank = int((scores > scores[target - 1]).sum())
        if rank < min(k, 10) and np.isfinite(scores[target - 1].item()):
            total += 1.0 / np.log2(rank + 2)
    return total / len(targets)


@pytest.mark.parametrize("stage", ["test", "valid"])
def test_evaluate_matches_a_reference_computation(tiny_checkpoint, tiny_dataset, stage) -> None:
    engine = make_engine("transformers", tiny_checkpoint)
    metrics = evaluate_engine(engine, tiny_dataset, lag=2, k=20, stage=stage)
    split = TemporalSplit(tiny_dataset, 2)
    lm = ItemTokenLM.from_pretrained(tiny_checkpoint)
    for query, side in (("stale", "cloud"), ("fresh", "device")):
        expected = reference_ndcg10(lm, split.views(stage, side), split.targets(stage), 20)
        assert abs(metrics[query]["ndcg@10"] - expected) < 1e-9
        assert metrics[query]["recall@20"] >= metrics[query]["hr@20"] - 1e-12
    assert metrics["fresh"]["ndcg@10"] > metrics["stale"]["ndcg@10"]  # the stale view misses the lag window
