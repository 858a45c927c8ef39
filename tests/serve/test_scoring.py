"""The scorer (cache + packing + onnxruntime) against the torch student, without HTTP."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from serve.scoring import NewNode
from tests.serve.conftest import TinyBundle
from tests.serve.helpers import scorer_for
from tests.serve.reference import new_node_logits

TOL = 1e-4


@pytest.mark.parametrize("student", ["gcn", "sage", "sage-res", "mlp", "gcn+attention"])
def test_every_node_matches_torch_full_graph_logits(tiny_bundles, student: str) -> None:
    tiny: TinyBundle = tiny_bundles(student)
    scorer = scorer_for(tiny.path)
    n = scorer.store.num_nodes
    blocks = [scorer.cache.get(i) for i in range(n)]
    np.testing.assert_allclose(scorer.run_blocks(blocks), tiny.logits, atol=TOL, rtol=0)


def test_onnx_on_whole_graph_matches_torch(gcn: TinyBundle) -> None:
    # A second, torch-free reference: the ONNX student on the whole pruned graph at once.
    scorer = scorer_for(gcn.path)
    store = scorer.store
    full = store.csr.dense_block(np.arange(store.num_nodes))
    session = ort.InferenceSession(str(gcn.path / "student.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"x": np.asarray(store.features), "adj": full})[0]
    np.testing.assert_allclose(logits, gcn.logits, atol=TOL, rtol=0)


@pytest.mark.parametrize("pack_nodes", [1, 40, 100_000])
def test_packing_does_not_change_scores(gcn: TinyBundle, pack_nodes: int) -> None:
    scorer = scorer_for(gcn.path, pack_nodes=pack_nodes)
    ids = [5, 17, 5, 299, 0, 42, 123, 7]
    scores = scorer.score(ids)
    expected = np.exp(gcn.logits[ids]) / np.exp(gcn.logits[ids]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scores.probabilities, expected, atol=TOL, rtol=0)
    assert scores.labels.tolist() == gcn.logits[ids].argmax(axis=1).tolist()


def test_lru_mode_gives_the_same_scores(gcn: TinyBundle) -> None:
    scorer = scorer_for(gcn.path, budget=20_000)  # a handful of blocks: most lookups miss
    scorer.cache.fill()
    ids = list(range(0, 300, 7))
    got = scorer.run_blocks([scorer.cache.get(i) for i in ids])
    np.testing.assert_allclose(got, gcn.logits[ids], atol=TOL, rtol=0)
    assert scorer.cache.misses > 0 and scorer.cache.bytes <= 20_000


@pytest.mark.parametrize("student", ["gcn", "sage", "sage-res", "mlp", "gcn+attention"])
@pytest.mark.parametrize("neighbours", [[], [3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 2]])
def test_new_node_matches_torch_on_augmented_graph(tiny_bundles, student: str, neighbours: list[int]) -> None:
    tiny: TinyBundle = tiny_bundles(student)
    scorer = scorer_for(tiny.path)
    features = (tiny.features[11] * 0.5 + 0.25).tolist()
    logits = scorer.run_blocks([scorer.store.new_node_block(np.asarray(features, dtype=np.float32),
                                                            np.asarray(neighbours, dtype=np.int64))])
    np.testing.assert_allclose(logits[0], new_node_logits(tiny, features, neighbours), atol=TOL, rtol=0)


def test_new_nodes_do_not_change_existing_scores(gcn: TinyBundle) -> None:
    scorer = scorer_for(gcn.path)
    before = scorer.score([3, 4]).probabilities
    mixed = scorer.score([3], [NewNode([0.0] * 8, [3, 4])]).probabilities
    after = scorer.score([3, 4]).probabilities
    np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(mixed[0], before[0], atol=1e-6)
