"""The GPU paths, wherever CUDA is present (skipped otherwise; benchmarks/gpu_check.sh runs them):
LRP on the GPU equals zennit's there, the invariant kNN graph on the GPU finds the CPU graph's
neighbours, and the demo audit runs on the GPU and finds its planted class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.method.test_lrp import _torchvision, max_relative_error, ours, zennits
from unhans.pipeline.data.models import MODELS
from unhans.pipeline.method.lrp import COMPOSITES
from unhans.pipeline.method.metrics.wasserstein import WassersteinParams, knn_wasserstein

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_on_the_gpu_equals_zennits(name: str) -> None:
    model = _torchvision("resnet50").eval().to(CUDA)
    for p in model.parameters():
        p.requires_grad_(False)
    norm = MODELS.get("resnet50").normaliser(3, CUDA)
    x = norm(torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(CUDA))
    composite = COMPOSITES.get(name)(
        norm(torch.zeros(1, 3, 1, 1, device=CUDA)), norm(torch.ones(1, 3, 1, 1, device=CUDA))
    )
    canonizers = MODELS.get("resnet50").canonizers
    _, relevance = ours(model, composite, canonizers(), x)
    _, ref = zennits(model, composite, canonizers(), x)
    assert max_relative_error(relevance, ref) <= 1e-4


def test_invariant_knn_graph_on_the_gpu_finds_the_cpu_graphs_neighbours() -> None:
    from sklearn.datasets import load_digits

    maps = load_digits().images[:400].astype(np.float32)
    params = WassersteinParams()
    on_cpu, _, _ = knn_wasserstein(maps, 10, params, device="cpu")
    on_gpu, _, _ = knn_wasserstein(maps, 10, params, device="cuda")
    recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(on_cpu, on_gpu)])
    assert recall >= 0.9


def test_demo_audit_on_the_gpu_ranks_the_planted_class_first(tmp_path) -> None:
    from sklearn.metrics import roc_auc_score

    from tests.helpers import FAST_DEMO, make_runner

    r = make_runner(tmp_path, overrides=[*FAST_DEMO, "compute.device=cuda"])
    r.run_all(until="score")
    assert r.record("attribute")["device"].startswith("cuda")
    cs = r.store.read_table("class_scores").set_index("class_id")
    assert cs.index[0] == 3  # the demo's checker backdoor targets class 3
    ss = r.store.read_table("sample_scores")
    target = ss[ss["class_id"] == 3]
    truth = r.store.read_table("samples")["artifact"].to_numpy(bool)[target["index"].to_numpy()]
    assert roc_auc_score(truth, target["clever_hans_score"]) > 0.95
