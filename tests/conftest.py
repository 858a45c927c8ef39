"""Shared fixtures. Real datasets come from $GRAPH_DISTILL_DATASETS (default ../shared/datasets);
under CI=true a missing dataset fails the test instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def datasets_dir() -> Path:
    return Path(os.environ.get("GRAPH_DISTILL_DATASETS", ROOT.parent / "shared" / "datasets"))


def require_dataset(relative: str) -> Path:
    path = datasets_dir() / relative
    if not path.exists():
        message = f"dataset {path} not found (set GRAPH_DISTILL_DATASETS)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def cora_dir() -> Path:
    return require_dataset("planetoid/Cora")


@pytest.fixture
def tolokers_npz() -> Path:
    return require_dataset("heterophilous/tolokers.npz")


@pytest.fixture
def amazon_mat() -> Path:
    return require_dataset("fraud-amazon/Amazon.mat")


@pytest.fixture
def acm_dir() -> Path:
    return require_dataset("hetero-acm")
