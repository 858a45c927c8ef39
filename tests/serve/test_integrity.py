"""What the service computes with cannot be changed under it: arrays and model are in memory as
verified, the model is self-contained, non-finite weights are refused at load, and a service
given a key serves only bundles signed with it (issue 15's integrity rows, through the service)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bundle import signing
from serve.errors import BundleError
from serve.runtime import open_service
from tests.serve.conftest import TinyBundle
from tests.tamper import copy_bundle, npy, tamper

KEY = b"k3y-for-tests-0123456789-abcdefghijkl"


@pytest.fixture
def copy(gcn: TinyBundle, tmp_path: Path) -> Path:
    return copy_bundle(gcn.path, tmp_path / "bundle")


def test_editing_or_truncating_a_served_bundle_changes_no_answer(copy: Path) -> None:
    service = open_service(copy, cache_budget_bytes=0)  # no cache: every block is rebuilt from the graph store
    before = service.scorer.score([0, 150, 299]).probabilities
    (copy / "graph/features.npy").write_bytes(npy(np.full((300, 8), 9.0, dtype=np.float32)))
    assert np.array_equal(service.scorer.score([0, 150, 299]).probabilities, before)
    with (copy / "graph/indices.npy").open("r+b") as fh:
        fh.truncate(128)  # a memory map would die with SIGBUS on the next read
    assert np.array_equal(service.scorer.score([0, 150, 299]).probabilities, before)


def _model_with(copy: Path, change) -> None:
    model = onnx.load(str(copy / "student.onnx"))
    change(model)
    tamper(copy, "student.onnx", model.SerializeToString(), rehash=True)


def test_non_finite_model_weights_are_refused_at_load(copy: Path) -> None:
    def poison(model: onnx.ModelProto) -> None:
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(weight).copy()
        values.flat[0] = np.nan
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))

    _model_with(copy, poison)
    with pytest.raises(BundleError, match="NaN or Inf logits") as caught:
        open_service(copy)
    assert caught.value.detail == {"file": "student.onnx"}


def test_a_model_with_external_data_is_refused_not_loaded_unverified(copy: Path) -> None:
    model = onnx.load(str(copy / "student.onnx"))
    onnx.save_model(model, str(copy / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)
    tamper(copy, "student.onnx", (copy / "external.onnx").read_bytes(), rehash=True)  # w.bin: listed nowhere
    with pytest.raises(BundleError, match="self-contained"):
        open_service(copy)


def test_a_service_with_a_key_serves_only_bundles_signed_with_it(copy: Path) -> None:
    with pytest.raises(BundleError, match="not signed"):
        open_service(copy, key=KEY)
    signing.sign(copy, KEY)
    assert open_service(copy, key=KEY).scorer.score([0]).probabilities.shape == (1, 3)
    with pytest.raises(BundleError, match="signature does not match"):
        open_service(copy, key=b"another-key-0123456789-abcdefghijklmn")
