"""The ONNX student in onnxruntime, tuned for one small request at a time on a shared CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from serve.bundle import Bundle
from serve.errors import BundleError

F32 = npt.NDArray[np.float32]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Sequential execution, fixed thread counts and no spinning: a spinning pool burns the cores
    the event loop and the other requests need, for matrices that take microseconds."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class Model:
    """x float32 [n, F] (+ adj float32 [n, n] for graph students) -> logits float32 [n, C]."""

    def __init__(self, bundle: Bundle, intra_op_threads: int) -> None:
        self._blame = {"file": bundle.manifest.model.file}  # BundleError detail: which file
        try:
            # From the verified bytes, not the path: onnxruntime then cannot read any file the
            # manifest does not list (a model with external data is refused, not loaded unverified).
            self.session = ort.InferenceSession(
                bundle.model, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BundleError(f"{bundle.model_path.name} is not a loadable self-contained ONNX model: {exc}",
                              self._blame) from None
        self.inputs = bundle.inputs
        self.num_classes = len(bundle.class_names)
        self._check_signature(bundle)

    def _check_signature(self, bundle: Bundle) -> None:
        names = [i.name for i in self.session.get_inputs()]
        if names != self.inputs:
            raise BundleError(f"student.onnx takes inputs {names}, the manifest says {self.inputs}", self._blame)
        outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in outputs:
            raise BundleError(f"student.onnx has outputs {outputs}, expected 'logits'", self._blame)
        width = self.session.get_inputs()[0].shape[1]
        manifest = bundle.manifest
        policy, f = manifest.policy, manifest.dataset.num_features
        expected = f + f * int(policy.mean_input) + int(policy.degree_input)  # + neighbour mean, log-degree
        if isinstance(width, int) and width != expected:
            raise BundleError(f"student.onnx takes {width} input columns, the manifest's features and policy "
                              f"say {expected}", self._blame)
        classes = self.session.get_outputs()[outputs.index("logits")].shape[-1]
        if isinstance(classes, int) and classes != self.num_classes:
            raise BundleError(f"student.onnx outputs {classes} classes, the manifest names {self.num_classes}",
                              self._blame)

    @property
    def graph_free(self) -> bool:
        return "adj" not in self.inputs

    def logits(self, x: F32, adj: F32 | None) -> F32:
        """x [n, F], adj [n, n] or None -> logits [n, C]."""
        feeds: dict[str, Any] = {"x": x} if self.graph_free else {"x": x, "adj": adj}
        out: F32 = self.session.run(["logits"], feeds)[0]
        return out


def softmax(logits: F32) -> F32:
    """Row-wise softmax of [b, C] logits, max-shifted so large logits cannot overflow."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: F32 = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return out
