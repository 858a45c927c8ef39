"""Graphs from unseen sources: odd but valid layouts load, bad ones fail at load with exit-2 messages."""

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.config import RunConfig
from distill.data import load_dataset
from distill.errors import DatasetError, TrainingError
from distill.report import _tail_line
from distill.teacher import feature_norm
from distill.train import TrainConfig, fit
from tests.distill.fixtures import write_mat, write_npz

TINY = ["--teacher-layers", "2", "--teacher-hidden", "16", "--student-hidden", "16", "--epochs", "10",
        "--patience", "5", "--min-epochs", "0", "--teacher", "gcn", "--quiet"]
N = 10
TRAIN = np.arange(N) < 5


def _load(tmp_path, **override):
    return load_dataset(f"npz:{write_npz(tmp_path / 'g.npz', **override)}")


def test_a_mat_file_runs_to_a_served_bundle(tmp_path):
    """scipy loads MATLAB arrays column-major; the bundle must still get C-order features."""
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), "--dataset", f"mat:{write_mat(tmp_path / 'F.mat')}", *TINY]) == 0
    assert (out / "manifest.json").is_file()
    assert load_dataset(f"mat:{tmp_path / 'F.mat'}").data.x.is_contiguous()


@pytest.mark.parametrize("masks", [
    {"train_masks": TRAIN, "val_masks": (np.arange(N) >= 5) & (np.arange(N) < 7), "test_masks": np.arange(N) >= 7},
    {"train_masks": np.stack([TRAIN] * 3, 1), "val_masks": np.stack([(np.arange(N) >= 5) & (np.arange(N) < 7)] * 3, 1),
     "test_masks": np.stack([np.arange(N) >= 7] * 3, 1)},
    {"train_masks": TRAIN[None].astype(np.int64), "val_masks": ((np.arange(N) >= 5) & (np.arange(N) < 7))[None] * 1.0,
     "test_masks": (np.arange(N) >= 7)[None].astype(np.uint8)},
], ids=["one split [N]", "PyG's [N, K]", "0/1 integers and floats"])
def test_mask_layouts_all_mean_the_same_split(tmp_path, masks):
    data = _load(tmp_path, **masks).data
    assert data.train_mask.dtype == torch.bool
    assert data.train_mask.tolist() == TRAIN.tolist()
    assert data.test_mask.nonzero().flatten().tolist() == [7, 8, 9]


def test_one_fixed_test_mask_serves_every_split_of_the_others(tmp_path):
    """PyG's WikiCS: train/val masks [N, 20], one test mask [N]."""
    train = np.stack([TRAIN, np.arange(N) < 4, TRAIN], 1)  # split 1 trains on nodes 0-3
    val = np.stack([(np.arange(N) >= 5) & (np.arange(N) < 7)] * 3, 1)
    val[4, 1] = True
    path = write_npz(tmp_path / "w.npz", train_masks=train, val_masks=val, test_masks=np.arange(N) >= 7)
    data = load_dataset(f"npz:{path}", split=1).data
    assert data.train_mask.nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert data.val_mask.nonzero().flatten().tolist() == [4, 5, 6]
    assert data.test_mask.nonzero().flatten().tolist() == [7, 8, 9]


def test_pyg_edge_index_layout_is_read(tmp_path):
    ring = np.array([[i, (i + 1) % N] for i in range(N)])
    assert torch.equal(_load(tmp_path, edges=ring.T).data.edge_index, _load(tmp_path, edges=ring).data.edge_index)


def test_unlabelled_nodes_outside_the_split_may_carry_any_label(tmp_path):
    y = np.array([0, 1] * 5, dtype=np.float64)
    test = np.zeros((1, N), bool)
    test[0, 7:9] = True  # node 9 belongs to no split
    y[9] = np.nan
    val = (np.arange(N) >= 5) & (np.arange(N) < 7)
    ds = _load(tmp_path, node_labels=y, train_masks=TRAIN[None], val_masks=val[None], test_masks=test)
    assert ds.data.y.tolist() == [0, 1] * 4 + [0, -1] and ds.num_classes == 2


@pytest.mark.parametrize(("override", "needle"), [
    ({"train_masks": np.array([[0, 1, 2, 3, 4]])}, "must be \\[K, N\\]"),
    ({"train_masks": np.tile(np.arange(N) % 3, (2, 1))}, "boolean \\(or 0/1\\)"),
    ({"val_masks": np.ones((2, N), bool)}, "splits must be disjoint"),
    ({"test_masks": np.zeros((2, N), bool)}, "test split is empty"),
    ({"val_masks": np.ones((3, N), bool)}, "different numbers of splits"),
    ({"node_labels": np.array([0, 2] * 5)}, "no node of the split has class \\[1\\]"),
    ({"node_labels": np.array([0, 1] * 4 + [0, -1])}, "integers >= 0"),
    ({"node_labels": np.array([0.0, 1.5] * 5)}, "integers >= 0"),
    ({"node_labels": np.array(["a", "b"] * 5)}, "integer class indices"),
    ({"node_labels": np.array([0] * 5 + [1] * 5)}, "training split holds labels of one class only"),
    ({"node_labels": np.array([0, 1, 0, 1, 0, 0, 0, 1, 0, 1])}, "validation split holds one class only"),
    ({"node_features": np.where(np.eye(N, 3) > 0, np.nan, 1.0)}, "NaN or infinite values .* node 0, column 0"),
    ({"node_features": np.full((N, 3), 1e300)}, "NaN or infinite values as float32"),
    ({"node_features": np.zeros((N, 0))}, "N, F >= 1"),
    ({"edges": np.array([[0, 1.5]])}, "non-integer node indices"),
    ({"edges": np.array([[True, False]])}, "integer node indices, not bool"),
    ({"node_ids": np.arange(N, dtype=np.uint64) + np.uint64(2**63)}, "store such ids as strings"),
], ids=["index list as mask", "mask values beyond 0/1", "overlapping splits", "empty test split",
        "split counts differ", "a class no node has", "-1 inside the split", "fractional labels", "string labels",
        "one training class", "binary validation of one class", "NaN feature", "float32 overflow", "no feature columns",
        "fractional edge", "boolean edges", "uint64 ids beyond int64"])
def test_bad_graphs_fail_at_load_naming_the_problem(tmp_path, override, needle):
    with pytest.raises(DatasetError, match=needle):
        _load(tmp_path, **override)


def test_bad_mat_labels_fail_at_load(tmp_path):
    labels = np.r_[np.ones(5), np.full(45, 2)].reshape(-1, 1)  # classes {1, 2}: no class 0
    with pytest.raises(DatasetError, match="no node of the split has class \\[0\\]"):
        load_dataset(f"mat:{write_mat(tmp_path / 'F.mat', Label=labels)}")


def test_bad_graph_exits_2_before_training(tmp_path, capsys):
    bad = write_npz(tmp_path / "g.npz", val_masks=np.ones((2, N), bool))
    assert main(["run", "--out", str(tmp_path / "b"), "--dataset", f"npz:{bad}", *TINY]) == 2
    assert "splits must be disjoint" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_negative_synthetic_seed_is_refused():
    for spec in ("synthetic:seed=-1", "synthetic-hetero:seed=-1"):
        with pytest.raises(DatasetError, match="seed=-1"):
            load_dataset(spec)


def test_a_column_constant_on_training_rows_is_not_blown_up(tmp_path):
    """A one-hot category no labelled node has: its std on the training rows is 0."""
    x = np.c_[np.random.default_rng(0).normal(size=(N, 2)), (~TRAIN).astype(float)]
    norm = feature_norm(RunConfig(feature_norm="standard"), _load(tmp_path, node_features=x))
    assert norm.std[2] == 1.0 and norm.std[:2].min() > 0.1
    assert float(((torch.as_tensor(x, dtype=torch.float32) - norm.mean) / norm.std).abs().max()) < 10


def test_the_flat_column_cutoff_is_relative_to_the_column_scale(tmp_path):
    rng = np.random.default_rng(0)
    tiny = rng.normal(size=N) * 1e-8  # a column on a 1e-8 scale: standardised like any other
    near_flat = np.where(TRAIN, 1.0 + rng.normal(size=N) * 2e-6, 0.0)  # 1 ± 2e-6 on training rows
    x = np.c_[rng.normal(size=(N, 2)), tiny, near_flat]
    norm = feature_norm(RunConfig(feature_norm="standard"), _load(tmp_path, node_features=x))
    assert norm.std[2] == pytest.approx(float(np.std(tiny[TRAIN].astype(np.float32), ddof=1)), rel=1e-3)
    assert norm.std[3] == 1.0
    stamps = 1.7e9 + rng.uniform(0, 259_200, size=N)  # seconds over three days: a large offset, a small spread
    norm = feature_norm(RunConfig(feature_norm="standard"), _load(tmp_path, node_features=np.c_[x[:, :2], stamps]))
    assert norm.std[2] > 1e4


def test_a_non_finite_loss_stops_training_with_a_domain_error(tmp_path):
    data = _load(tmp_path).data
    model = torch.nn.Linear(3, 2)
    model.run = lambda x, edge_index, edge_weight: model(x)

    class Graph:
        edge_index, edge_weight = data.edge_index, None

    with pytest.raises(TrainingError, match="training loss is nan at epoch 1"):
        fit(model, data, Graph(), lambda out: out.sum() * torch.tensor(float("nan")), TrainConfig(5, 5, 0.01, 0.0, 0),
            "probe", progress=False)


def test_force_never_deletes_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    out = tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["run", "--out", str(out), "--force", "--dataset", "synthetic:nodes=200", *TINY]) == 2
    assert "no bundle" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep me"


def test_tail_line_reads_a_rare_class_absent_from_validation():
    t = {"rare_class": 1, "shift": 0.5, "floor": None, "rate_floor": 0.1, "val_rare_before": None,
         "val_rare_after": None, "rate_before": 0.05, "rate_after": 0.1, "val_balanced_before": 0.5,
         "val_balanced_after": 0.5, "val_metric_before": 0.7, "val_metric_after": 0.7}
    line = _tail_line(t, ["a", "b"], "accuracy")
    assert "recall of b n/a -> n/a" in line and "recalls n/a of b" in line
