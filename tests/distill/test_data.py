import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from distill.data import load_dataset
from distill.errors import DatasetError
from tests.distill.fixtures import write_mat, write_npz, write_planetoid


def test_synthetic_is_deterministic_imbalanced_and_undirected():
    a = load_dataset("synthetic:nodes=600,seed=3")
    b = load_dataset("synthetic:nodes=600,seed=3")
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.data.edge_index, b.data.edge_index)
    shares = torch.bincount(a.data.y).float() / a.data.num_nodes
    assert a.class_names == ("legit", "suspicious", "fraud")
    assert shares[2] < 0.1 < shares[1] < shares[0]
    assert a.data.is_undirected() and not a.data.has_self_loops()
    masks = a.data.train_mask.int() + a.data.val_mask.int() + a.data.test_mask.int()
    assert torch.all(masks == 1)


def test_synthetic_homophily_is_settable():
    def homophily(spec: str) -> float:
        d = load_dataset(spec).data
        return float((d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean())

    assert homophily("synthetic:nodes=800,homophily=0.9") > homophily("synthetic:nodes=800,homophily=0.3") + 0.15


def test_synthetic_has_power_law_hubs():
    d = load_dataset("synthetic:nodes=2000").data
    deg = torch.bincount(d.edge_index[1], minlength=d.num_nodes).float()
    assert deg.max() > 8 * deg.median()


def test_planetoid_tiny(tmp_path):
    ds = load_dataset(f"planetoid:{write_planetoid(tmp_path / 'tiny')}")
    d = ds.data
    assert (d.num_nodes, d.num_features, ds.num_classes) == (520, 5, 3)
    assert (int(d.train_mask.sum()), int(d.val_mask.sum()), int(d.test_mask.sum())) == (4, 500, 10)
    assert d.edge_index.size(1) == 2 * 520  # the fixture lists each edge in one direction
    assert ds.source["kind"] == "planetoid" and "ind.tiny.x" in ds.source["files"]
    assert not (tmp_path / "tiny" / "processed").exists()  # source folders are never written


def test_npz_tiny_makes_edges_undirected_and_picks_split(tmp_path):
    path = write_npz(tmp_path / "g.npz")
    ds = load_dataset(f"npz:{path}", split=1)
    d = ds.data
    assert d.num_nodes == 10 and d.edge_index.size(1) == 20 and d.is_undirected()
    assert int(d.train_mask.sum()) == 5 and int(d.test_mask.sum()) == 3
    assert ds.source["split"] == 1


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("nonsense", "expected one of"),
        ("planetoid:", "expected one of"),
        ("synthetic:nodes", "bad option"),
        ("synthetic:colour=red", "bad option"),
        ("synthetic:nodes=ten", "not a int"),
        ("synthetic:homophily=1.5", "homophily"),
        ("npz:/definitely/missing.npz", "does not exist"),
    ],
)
def test_bad_specs_name_the_spec(spec, needle):
    with pytest.raises(DatasetError, match=needle):
        load_dataset(spec)


def test_npz_problems(tmp_path):
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(write_npz(tmp_path / "ok.npz").read_bytes()[:200])
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(f"npz:{truncated}")
    no_edges = tmp_path / "n.npz"
    np.savez(no_edges, node_features=np.zeros((2, 2)))
    with pytest.raises(DatasetError, match="lacks keys"):
        load_dataset(f"npz:{no_edges}")
    bad = write_npz(tmp_path / "b.npz", edges=np.array([[0, 99]]))
    with pytest.raises(DatasetError, match="outside"):
        load_dataset(f"npz:{bad}")
    with pytest.raises(DatasetError, match="out of range"):
        load_dataset(f"npz:{tmp_path / 'ok.npz'}", split=7)


def test_planetoid_problems(tmp_path):
    root = write_planetoid(tmp_path / "p")
    (root / "raw" / "ind.tiny.graph").unlink()
    with pytest.raises(DatasetError, match="missing Planetoid files"):
        load_dataset(f"planetoid:{root}")
    root = write_planetoid(tmp_path / "q")
    (root / "raw" / "ind.tiny.allx").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset(f"planetoid:{root}")


def test_planetoid_goes_through_the_graph_checks(tmp_path):
    root = write_planetoid(tmp_path / "p")
    allx = sp.lil_matrix((510, 5), dtype=np.float32)
    allx[3, 2] = np.nan
    with open(root / "raw" / "ind.tiny.allx", "wb") as fh:
        pickle.dump(allx.tocsr(), fh)
    with pytest.raises(DatasetError, match="NaN or infinite values .* node 3, column 2"):
        load_dataset(f"planetoid:{root}")


@pytest.mark.slow
def test_real_cora(cora_dir):
    ds = load_dataset(f"planetoid:{cora_dir}")
    d = ds.data
    assert (d.num_nodes, d.num_edges, d.num_features, ds.num_classes) == (2708, 10556, 1433, 7)
    assert (int(d.train_mask.sum()), int(d.val_mask.sum()), int(d.test_mask.sum())) == (140, 500, 1000)


@pytest.mark.slow
def test_real_tolokers(tolokers_npz):
    ds = load_dataset(f"npz:{tolokers_npz}", split=0)
    d = ds.data
    assert (d.num_nodes, d.num_edges, d.num_features) == (11758, 2 * 519000, 10)
    assert ds.class_names == ("not_banned", "banned") and int(d.y.sum()) == 2566


def test_mat_layout_gets_a_seeded_stratified_split(tmp_path):
    path = write_mat(tmp_path / "Tiny.mat")
    a, b, c = (load_dataset(f"mat:{path}", split=s).data for s in (0, 0, 1))
    assert a.num_edges == 2 * 50 and ds_classes(path) == ("normal", "anomaly")
    for mask, share in (("train_mask", 0.4), ("val_mask", 0.2), ("test_mask", 0.4)):
        m = getattr(a, mask)
        assert int(m.sum()) == round(share * 45) + round(share * 5)  # each class split on its own
        assert int(a.y[m].sum()) == round(share * 5)
        assert torch.equal(m, getattr(b, mask))  # same seed, same split
    assert not torch.equal(a.train_mask, c.train_mask)
    assert not (a.train_mask & a.val_mask).any() and bool((a.train_mask | a.val_mask | a.test_mask).all())


def ds_classes(path):
    return load_dataset(f"mat:{path}").class_names


def test_mat_without_the_expected_keys_is_refused(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "x.mat", {"A": np.ones((2, 2))})
    with pytest.raises(DatasetError, match="lacks keys"):
        load_dataset(f"mat:{tmp_path / 'x.mat'}")
    (tmp_path / "junk.mat").write_bytes(b"not matlab")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(f"mat:{tmp_path / 'junk.mat'}")


@pytest.mark.slow
def test_real_amazon_fraud(amazon_mat):
    ds = load_dataset(f"mat:{amazon_mat}", split=0)
    d = ds.data
    assert (d.num_nodes, d.num_edges, d.num_features) == (10224, 2 * 175608, 25)
    assert int(d.y.sum()) == 693 and int(d.y[d.train_mask].sum()) == round(0.4 * 693)
