"""The pretrained path: SmolLM2-135M from its GGUF file, item tokens, a few LoRA steps, merge, save, serve."""

from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from llm_cloud.model import ItemTokenLM
from llm_cloud.processes import free_port, start_service
from tests.llm_cloud.conftest import needs_smollm2

pytestmark = [pytest.mark.slow, needs_smollm2]


def test_gguf_base_with_lora_trains_merges_reloads_and_serves(smol_checkpoint: Path, tmp_path) -> None:
    with safe_open(smol_checkpoint / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert not any("lora" in name or "trainable_tokens" in name for name in names)  # merged, as vLLM needs
    lm = ItemTokenLM.from_pretrained(smol_checkpoint)
    assert lm.template.kind == "titles" and lm.template.first_item_token == 49152
    expected = lm.top_k([[1, 2, 3]], 5)
    with start_service(
        ["--checkpoint", str(smol_checkpoint)], free_port(), tmp_path / "service.log", 180
    ) as server:
        reply = httpx.post(f"{server.url}/v1/candidates", json={"histories": [[1, 2, 3]], "k": 5}, timeout=60)
    assert reply.status_code == 200
    assert reply.json()["lists"][0]["items"] == expected[0][0]
    assert not {1, 2, 3} & set(expected[0][0])
