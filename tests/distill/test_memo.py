"""distill.memo.LastResult: kept only for the same unmodified tensor and key, never copied."""

import copy
import pickle

import torch

from distill.memo import LastResult


def test_last_result_is_kept_for_the_same_unmodified_tensor_and_never_copied():
    memo: LastResult[str] = LastResult()
    source = torch.zeros(3)
    assert memo.get(source, ("k",)) is None
    assert memo.put(source, ("k",), "value") == "value"
    assert memo.get(source, ("k",)) == "value"
    assert memo.get(source, ("other key",)) is None and memo.get(torch.zeros(3), ("k",)) is None
    source.add_(1)  # changed in place: its version counter moved
    assert memo.get(source, ("k",)) is None
    memo.put(source, ("k",), "value")
    # A copy or a pickle starts empty (a CSR value could not be deep-copied), the original keeps its value.
    assert copy.deepcopy(memo).get(source, ("k",)) is None
    assert pickle.loads(pickle.dumps(memo)).get(source, ("k",)) is None
    assert memo.get(source, ("k",)) == "value"
