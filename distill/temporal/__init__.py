"""Temporal graphs (issue 13, offline half): a strict as-of-t protocol over time-stamped signed edges.

`data` loads a dataset into a `bundle.temporal.TemporalStore`; `protocol` defines the early-detection
examples and splits; `models` holds the baseline, teacher and student; `loop` trains them; `export`
writes the student to ONNX; `canary` checks that nothing after t reaches a prediction made as of t.
"""
