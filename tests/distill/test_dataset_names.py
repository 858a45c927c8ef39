"""Dataset specs by name: an existing path wins, then the cache, then a checked download.

No test touches the network: `distill.sources.download_url` is replaced by a fake that copies the
public files from the shared datasets folder (or writes chosen bytes, or fails as offline does).
"""

from __future__ import annotations

import shutil
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest

from distill import sources
from distill.cli import main
from distill.data import load_dataset
from distill.errors import DatasetError
from tests.distill.fixtures import write_planetoid

Download = Callable[..., str]
CORA_FILES = [f"ind.cora.{part}" for part in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(sources.CACHE_ENV, str(root))
    return root


def _forbid_download(monkeypatch) -> None:
    def fail(url: str, folder: str, log: bool = True, filename: str | None = None) -> str:
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(sources, "download_url", fail)


def _fake_download(monkeypatch, source_dir: Path | None, calls: list[str], data: bytes = b"") -> None:
    """download_url stand-in: copy the file of the same name from `source_dir`, or write `data`."""
    def fake(url: str, folder: str, log: bool = True, filename: str | None = None) -> str:
        calls.append(url)
        name = filename or url.rpartition("/")[2]
        target = Path(folder) / name
        if source_dir is None:
            target.write_bytes(data)
        else:
            shutil.copyfile(source_dir / name, target)
        return str(target)

    monkeypatch.setattr(sources, "download_url", fake)


def _offline(monkeypatch) -> None:
    def fail(url: str, folder: str, log: bool = True, filename: str | None = None) -> str:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sources, "download_url", fail)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_an_existing_path_wins_over_a_name(tmp_path, cache, monkeypatch):
    write_planetoid(tmp_path / "work" / "Cora")  # a folder called Cora in the working directory
    monkeypatch.chdir(tmp_path / "work")
    _forbid_download(monkeypatch)
    ds = load_dataset("planetoid:Cora")
    assert ds.data.num_nodes == 520 and ds.name == "tiny"  # the local fixture, not the public Cora
    assert not cache.exists()


def test_cache_miss_downloads_each_file_from_the_pinned_url_and_checks_it(cora_dir, cache, monkeypatch):
    calls: list[str] = []
    _fake_download(monkeypatch, cora_dir / "raw", calls)
    path = sources.resolve("planetoid", "cora", "planetoid:cora")  # names are case-insensitive
    assert path == cache / "planetoid" / "Cora"
    assert calls == [f"{sources.PLANETOID_URL}/{name}" for name in CORA_FILES]
    assert sources.PLANETOID_URL.startswith("https://github.com/kimiyoung/planetoid/raw/")
    assert _leftovers(path / "raw") == sorted(CORA_FILES)  # no temporary download folder left behind
    for name in CORA_FILES:
        assert (path / "raw" / name).read_bytes() == (cora_dir / "raw" / name).read_bytes()
    sources.resolve("planetoid", "Cora", "planetoid:Cora")
    assert len(calls) == len(CORA_FILES)  # the second use is a cache hit


@pytest.mark.slow
def test_cache_hit_loads_without_downloading(cora_dir, cache, monkeypatch):
    shutil.copytree(cora_dir / "raw", cache / "planetoid" / "Cora" / "raw")
    _forbid_download(monkeypatch)
    ds = load_dataset("planetoid:Cora")
    assert (ds.data.num_nodes, ds.data.num_edges, ds.num_classes) == (2708, 10556, 7)
    assert ds.source["spec"] == "planetoid:Cora" and "ind.cora.x" in ds.source["files"]
    assert not (cache / "planetoid" / "Cora" / "processed").exists()  # the cache is read like any path


@pytest.mark.slow
def test_npz_name_downloads_tolokers_and_loads_it(tolokers_npz, cache, monkeypatch):
    calls: list[str] = []
    _fake_download(monkeypatch, tolokers_npz.parent, calls)
    ds = load_dataset("npz:tolokers", split=0)
    assert calls == [f"{sources.HETEROPHILOUS_URL}/tolokers.npz"]
    assert (cache / "npz" / "tolokers.npz").is_file()
    assert ds.data.num_nodes == 11758 and ds.class_names == ("not_banned", "banned")


def test_offline_names_the_url_and_the_cache_path(cache, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(DatasetError) as err:
        sources.resolve("planetoid", "Cora", "planetoid:Cora")
    message = str(err.value)
    assert "\n" not in message
    assert f"{sources.PLANETOID_URL}/ind.cora.x" in message
    assert f"put the 8 files ind.cora.* from {sources.PLANETOID_URL}/ into {cache / 'planetoid' / 'Cora' / 'raw'} " \
        in message
    assert "planetoid:/path/to/Cora" in message and "name resolution" in message
    assert _leftovers(cache / "planetoid" / "Cora" / "raw") == []


def test_offline_through_the_cli_exits_2_with_one_line(cache, monkeypatch, capsys, tmp_path):
    _offline(monkeypatch)
    out = tmp_path / "bundle"
    assert main(["run", "--dataset", "npz:tolokers", "--out", str(out), "--quiet"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1 and f"{sources.HETEROPHILOUS_URL}/tolokers.npz" in lines[0]
    assert f"put tolokers.npz from {sources.HETEROPHILOUS_URL}/ into {cache / 'npz'} " in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("planetoid:Corra", ["'Corra' is neither an existing path nor a known name", "Cora, CiteSeer, PubMed"]),
        ("npz:nope", ["known name", "tolokers, roman_empire, amazon_ratings, minesweeper, questions"]),
        ("npz:/definitely/missing.npz", ["does not exist", "or name one of tolokers"]),
        ("planetoid:./Cora", ["does not exist", "or name one of Cora"]),  # a path form is never a name
        ("mat:amazon", ["amazon does not exist"]),  # mat: and acm: take paths only
        ("acm:acm", ["acm does not exist"]),
    ],
)
def test_unknown_names_and_missing_paths_list_what_would_work(spec, needles, cache, monkeypatch):
    _forbid_download(monkeypatch)
    with pytest.raises(DatasetError) as err:
        load_dataset(spec)
    for needle in needles:
        assert needle in str(err.value)
    if spec.startswith("mat:") or spec.startswith("acm:"):
        assert "name one of" not in str(err.value)


def test_a_download_with_the_wrong_sha256_is_refused_and_deleted(cache, monkeypatch):
    calls: list[str] = []
    _fake_download(monkeypatch, None, calls, data=b"not the published file")
    with pytest.raises(DatasetError, match=r"ind\.cora\.x has sha256 .*refused and deleted"):
        sources.resolve("planetoid", "Cora", "planetoid:Cora")
    assert calls == [f"{sources.PLANETOID_URL}/ind.cora.x"]  # stops at the first bad file
    assert _leftovers(cache / "planetoid" / "Cora" / "raw") == []


def test_a_wrong_file_in_the_cache_is_refused_and_kept(cache, monkeypatch):
    raw = cache / "planetoid" / "Cora" / "raw"
    raw.mkdir(parents=True)
    (raw / "ind.cora.x").write_bytes(b"placed by hand")
    _forbid_download(monkeypatch)
    with pytest.raises(DatasetError, match=r"not the published one; delete .*ind\.cora\.x"):
        sources.resolve("planetoid", "Cora", "planetoid:Cora")
    assert (raw / "ind.cora.x").read_bytes() == b"placed by hand"  # the user's file: reported, not removed


def test_a_file_without_a_recorded_checksum_is_accepted(cache, monkeypatch):
    calls: list[str] = []
    _fake_download(monkeypatch, None, calls, data=b"unchecked")
    path = sources.resolve("npz", "Roman-Empire", "npz:Roman-Empire")  # PyG's spelling normalised
    assert path == cache / "npz" / "roman_empire.npz" and path.read_bytes() == b"unchecked"
    assert calls == [f"{sources.HETEROPHILOUS_URL}/roman_empire.npz"]


def test_every_named_file_has_a_checksum_entry():
    named = {f for kinds in sources.SOURCES.values() for s in kinds.values() for f in s.files}
    assert named == set(sources._SHA256)
    assert all(sources._SHA256[f"ind.{n}.{p}"] for n in ("cora", "citeseer") for p in
               ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"))


def test_cache_dir_comes_from_the_env_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "c"))
    assert sources.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(sources.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_dir() == tmp_path / "home" / ".cache" / "graph-distill"


def test_an_unwritable_cache_says_which_variable_to_set(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(sources.CACHE_ENV, str(blocker))  # a file where the cache folder should be
    _forbid_download(monkeypatch)
    with pytest.raises(DatasetError, match=f"set {sources.CACHE_ENV}"):
        sources.resolve("npz", "tolokers", "npz:tolokers")
