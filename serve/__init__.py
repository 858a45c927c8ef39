"""Scoring service: serves a distill bundle with onnxruntime + numpy (never torch)."""
