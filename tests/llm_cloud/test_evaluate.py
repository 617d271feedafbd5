import numpy as np
import pytest
import torch

from llm_cloud.engines import make_engine
from llm_cloud.evaluate import evaluate_engine
from llm_cloud.model import ItemTokenLM
from lsc4rec.data import TemporalSplit


def reference_ranks(lm: ItemTokenLM, histories, targets) -> np.ndarray:
    """Independent of the list path: full log-probs, history masked, the target's 0-based rank counted directly."""
    all_scores = lm.item_log_probs([h.tolist() for h in histories])
    ranks = []
    for scores, history, target in zip(all_scores, histories, targets, strict=True):
        scores[torch.tensor(history) - 1] = -torch.inf
        finite = np.isfinite(scores[target - 1].item())
        ranks.append(int((scores > scores[target - 1]).sum()) if finite else np.inf)
    return np.array(ranks, dtype=float)


@pytest.mark.parametrize("stage", ["test", "valid"])
def test_evaluate_matches_a_reference_computation(tiny_checkpoint, tiny_dataset, stage) -> None:
    k = 2  # the fresh target (the next item) is mostly inside, the stale one (three ahead) mostly outside
    engine = make_engine("transformers", tiny_checkpoint)
    metrics = evaluate_engine(engine, tiny_dataset, lag=2, k=k, stage=stage)
    split = TemporalSplit(tiny_dataset, 2)
    lm = ItemTokenLM.from_pretrained(tiny_checkpoint)
    for query, side in (("stale", "cloud"), ("fresh", "device")):
        ranks = reference_ranks(lm, split.views(stage, side), split.targets(stage))
        ndcg10 = np.mean([1.0 / np.log2(r + 2) if r < min(k, 10) else 0.0 for r in ranks])
        assert abs(metrics[query]["ndcg@10"] - ndcg10) < 1e-9
        assert metrics[query][f"recall@{k}"] == pytest.approx((ranks < k).mean())  # targets inside the K-list
    assert metrics["fresh"][f"recall@{k}"] > 0.5 > metrics["stale"][f"recall@{k}"]  # so recall is tested
    assert metrics["fresh"]["ndcg@10"] > metrics["stale"]["ndcg@10"]  # the stale view misses the lag window
