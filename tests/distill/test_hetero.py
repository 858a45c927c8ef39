"""ACM (HeCo layout) as HeteroData and its paper-author-paper view, on a tiny fixture and the real files."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bundle.files import open_bundle
from distill.cli import main
from distill.config import RunConfig
from distill.data import load_dataset
from distill.errors import ConfigError, DatasetError
from distill.hetero import metapath_edges
from distill.hetero_models import HeteroSAGE
from distill.teacher import teacher_families


def write_tiny_acm(root: Path) -> Path:
    """5 papers, 3 authors, 2 subjects: papers 0 and 1 share author 0, papers 1 and 2 author 1,
    paper 3 alone has author 2, paper 4 has no author."""
    root.mkdir()
    sp.save_npz(root / "p_feat.npz", sp.csr_matrix(np.eye(5, 4)))
    sp.save_npz(root / "a_feat.npz", sp.csr_matrix(np.ones((3, 4))))
    np.savetxt(root / "pa.txt", [[0, 0], [1, 0], [1, 1], [2, 1], [3, 2]], fmt="%d", delimiter="\t")
    np.savetxt(root / "ps.txt", [[0, 0], [1, 0], [2, 1], [3, 1], [4, 0]], fmt="%d", delimiter="\t")
    np.save(root / "labels.npy", np.array([0, 1, 0, 1, 0], dtype=np.float64))
    for k in (20, 40, 60):
        np.save(root / f"train_{k}.npy", np.array([0, 1]))
        np.save(root / f"val_{k}.npy", np.array([2, 3]))  # both classes: a binary task selects on AUROC
        np.save(root / f"test_{k}.npy", np.array([4]))
    return root


def test_tiny_acm_types_links_and_the_meta_path_view(tmp_path):
    ds = load_dataset(f"acm:{write_tiny_acm(tmp_path / 'acm')}")
    graph = ds.hetero
    assert graph["paper"].x.shape == (5, 4) and graph["author"].x.shape == (3, 4) and graph["subject"].num_nodes == 2
    assert graph["paper", "writes", "author"].edge_index.shape == (2, 5)
    assert torch.equal(graph["author", "written_by", "paper"].edge_index,
                       graph["paper", "writes", "author"].edge_index.flip(0))
    # Meta-path P-A-P: 0-1 (author 0) and 1-2 (author 1), both directions; 3 and 4 isolated.
    assert sorted(map(tuple, ds.data.edge_index.t().tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert ds.data.y.tolist() == [0, 1, 0, 1, 0] and ds.data.train_mask.tolist() == [True, True, False, False, False]
    # P-S-P would link papers 0, 1, 4 and 2, 3.
    assert metapath_edges(graph, via="subject").shape == (2, 8)
    assert ds.source["labels_per_class"] == 20


@pytest.mark.parametrize("split, needle", [(3, "out of range"), (-1, "out of range")])
def test_acm_bad_split_is_named(tmp_path, split, needle):
    with pytest.raises(DatasetError, match=needle):
        load_dataset(f"acm:{write_tiny_acm(tmp_path / 'acm')}", split)


def test_acm_missing_file_and_bad_links_are_named(tmp_path):
    root = write_tiny_acm(tmp_path / "acm")
    (root / "val_40.npy").unlink()
    with pytest.raises(DatasetError, match="val_40.npy"):
        load_dataset(f"acm:{root}", 1)
    np.savetxt(root / "pa.txt", [[0, 9]], fmt="%d")
    with pytest.raises(DatasetError, match="pa.txt"):
        load_dataset(f"acm:{root}")


def test_real_acm_matches_hecos_numbers(acm_dir):
    ds = load_dataset(f"acm:{acm_dir}", 0)
    assert ds.data.num_nodes == 4019 and ds.data.num_features == 1902 and ds.num_classes == 3
    assert ds.data.edge_index.shape[1] == 57853 - 4019  # HeCo's pap.npz minus its diagonal
    assert int(ds.data.train_mask.sum()) == 60 and int(ds.data.val_mask.sum()) == int(ds.data.test_mask.sum()) == 1000
    assert ds.hetero["author"].num_nodes == 7167 and ds.hetero["paper", "writes", "author"].edge_index.shape[1] == 13407


def write_small_acm(root: Path, papers: int = 90, authors: int = 40, seed: int = 0) -> Path:
    """A random ACM-shaped folder big enough to train on: 3 classes, authors writing within a class."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    y = np.arange(papers) % 3
    topical = (np.arange(12)[None, :] // 4 == y[:, None]) & (rng.random((papers, 12)) < 0.5)
    words = (rng.random((papers, 12)) < 0.2) | topical
    sp.save_npz(root / "p_feat.npz", sp.csr_matrix(words.astype(np.float64)))
    sp.save_npz(root / "a_feat.npz", sp.csr_matrix(rng.random((authors, 12)) < 0.3).astype(np.float64))
    author_class = np.arange(authors) % 3
    pa = [(p, a) for p in range(papers) for a in rng.choice(np.flatnonzero(author_class == y[p]), 2, replace=False)]
    np.savetxt(root / "pa.txt", pa, fmt="%d", delimiter="\t")
    np.savetxt(root / "ps.txt", [(p, rng.integers(0, 4)) for p in range(papers)], fmt="%d", delimiter="\t")
    np.save(root / "labels.npy", y.astype(np.float64))
    order = rng.permutation(papers)
    for k in (20, 40, 60):
        np.save(root / f"train_{k}.npy", order[:30])
        np.save(root / f"val_{k}.npy", order[30:60])
        np.save(root / f"test_{k}.npy", order[60:])
    return root


def test_the_hetero_teacher_reads_every_type_and_saves_weights_only(tmp_path):
    ds = load_dataset(f"acm:{write_small_acm(tmp_path / 'acm')}")
    model = HeteroSAGE(12, 8, 2, 3, graph=ds.hetero)
    out = model.run(ds.data.x)
    assert out.logits.shape == (90, 3) and [h.shape for h in out.hidden] == [(90, 8), (90, 8)]
    assert not any(k.startswith(("edges_", "x_")) for k in model.state_dict())  # the graph is not in teacher.pt
    before = model.eval()(ds.data.x)
    ds.hetero["author"].x.zero_()  # the author features reach the paper logits
    same_weights = HeteroSAGE(12, 8, 2, 3, graph=ds.hetero).eval()
    same_weights.load_state_dict(model.state_dict())
    assert not torch.allclose(same_weights(ds.data.x), before)


def test_auto_adds_the_hetero_teacher_only_on_heterogeneous_data(tmp_path):
    acm = load_dataset(f"acm:{write_small_acm(tmp_path / 'acm')}")
    assert teacher_families(RunConfig(), acm)[-1] == "hetero-sage"
    assert "hetero-sage" not in teacher_families(RunConfig(), load_dataset("synthetic:nodes=50,features=4"))
    with pytest.raises(ConfigError, match="needs a heterogeneous dataset"):
        teacher_families(RunConfig(teacher="hetero-sage"), load_dataset("synthetic:nodes=50,features=4"))


def test_a_hetero_teacher_distils_into_a_served_meta_path_student(tmp_path):
    out = tmp_path / "bundle"
    assert main(["run", "--dataset", f"acm:{write_small_acm(tmp_path / 'acm')}", "--teacher", "hetero-sage",
                 "--teacher-layers", "2", "--teacher-hidden", "16", "--epochs", "20", "--patience", "5",
                 "--student", "gcn", "--quiet", "--out", str(out)]) == 0
    manifest = open_bundle(out).manifest
    assert manifest.metrics["teacher"]["family"] == "hetero-sage" and manifest.dataset.name == "acm"
    assert manifest.parity is not None and manifest.parity.max_abs_diff <= manifest.parity.tolerance


def test_structure_kd_with_a_hetero_teacher_is_refused_not_a_traceback(tmp_path, capsys):
    acm = write_small_acm(tmp_path / "acm")
    assert main(["run", "--dataset", f"acm:{acm}", "--teacher", "hetero-sage", "--kd", "response,structure",
                 "--quiet", "--out", str(tmp_path / "b")]) == 2
    assert "drop structure from --kd" in capsys.readouterr().err
    # Under auto the type-aware families are left out of the race instead.
    assert "hetero-sage" not in teacher_families(RunConfig(kd="response,structure"), load_dataset(f"acm:{acm}"))
