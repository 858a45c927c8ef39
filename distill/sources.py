"""Dataset names -> local files: an existing path wins, else a known name is looked up in the cache
and downloaded there on first use.

Names: `planetoid:Cora | CiteSeer | PubMed` (kimiyoung/planetoid, the files PyG's `Planetoid`
downloads) and `npz:tolokers | roman_empire | amazon_ratings | minesweeper | questions`
(yandex-research/heterophilous-graphs, the files PyG's `HeterophilousGraphDataset` downloads).
`mat:` and `acm:` take a path only: PyG has no source for the single-relation Amazon.mat or HeCo's
ACM layout (its HGB "ACM" is another format), so there is nothing well-known to download.

Cache: `$GRAPH_DISTILL_CACHE`, default `~/.cache/graph-distill`; `planetoid/<Name>/raw/ind.<name>.*`
and `npz/<name>.npz` under it, the same layouts a path spec reads, so a cache filled by hand (offline)
works. Downloads go through PyG's `download_url` into a temporary folder beside the target and are
moved into place only once their sha256 matches the recorded one, so a failed or tampered download
never leaves a file the next run would trust. The files stay untrusted after that: Planetoid's
pickles are still read through distill.safe_pickle, npz files without pickle support.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch_geometric.data import download_url

from distill.errors import DatasetError

CACHE_ENV = "GRAPH_DISTILL_CACHE"

# Pinned to the commits the shared copies came from (PyG follows the branches `master` / `main`):
# a pinned URL serves fixed bytes, so the checksums below keep holding.
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/af6abf468a772cc055bec88c52e4d6f51b7c37e3/data"
HETEROPHILOUS_URL = (
    "https://github.com/yandex-research/heterophilous-graphs/raw/a431395582e929d88271309716bea4fe24ce6318/data"
)

# sha256 of the files at those commits (git blobs; Cora, CiteSeer and tolokers also equal to the copies
# in the project's shared datasets folder). None: the blob was not available to hash, so that file is
# accepted unchecked (its parser still treats it as untrusted).
_SHA256: dict[str, str | None] = {
    "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "ind.citeseer.allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "ind.citeseer.ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "ind.citeseer.graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "ind.citeseer.test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    "ind.citeseer.tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "ind.citeseer.ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "ind.pubmed.allx": None,
    "ind.pubmed.ally": "0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e",
    "ind.pubmed.graph": "5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9",
    "ind.pubmed.test.index": "b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5",
    "ind.pubmed.tx": "4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d",
    "ind.pubmed.ty": "ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd",
    "ind.pubmed.x": "fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33",
    "ind.pubmed.y": "e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3",
    "tolokers.npz": "dacf3ac94cec53d03cd2adb5255c08b33dee1656c33ca8164a464bd9450a1667",
    "minesweeper.npz": "e664c8dacf1e8ac466c2c09ed4b237bd2c5541f47a6eae9c6092cb87f16412b3",
    "roman_empire.npz": None,
    "amazon_ratings.npz": None,
    "questions.npz": None,
}
_PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


@dataclass(frozen=True)
class Source:
    """Where one named dataset comes from and where it lands under the cache directory."""

    kind: str
    name: str
    base_url: str
    files: tuple[str, ...]
    folder: str  # under the cache: where the files are written
    target: str  # under the cache: the path the loader is given (a folder or the one file)

    def url(self, file: str) -> str:
        return f"{self.base_url}/{file}"


def _planetoid(name: str) -> Source:
    files = tuple(f"ind.{name.lower()}.{part}" for part in _PLANETOID_PARTS)
    return Source("planetoid", name, PLANETOID_URL, files, f"planetoid/{name}/raw", f"planetoid/{name}")


def _heterophilous(name: str) -> Source:
    return Source("npz", name, HETEROPHILOUS_URL, (f"{name}.npz",), "npz", f"npz/{name}.npz")


SOURCES: dict[str, dict[str, Source]] = {
    "planetoid": {s.name.lower(): s for s in map(_planetoid, ("Cora", "CiteSeer", "PubMed"))},
    "npz": {s.name: s for s in map(_heterophilous,
                                   ("tolokers", "roman_empire", "amazon_ratings", "minesweeper", "questions"))},
}


def cache_dir() -> Path:
    """`$GRAPH_DISTILL_CACHE`, else `~/.cache/graph-distill`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graph-distill"


def resolve(kind: str, arg: str, spec: str) -> Path:
    """The local path for a spec's argument: an existing path, else a named dataset's cached copy
    (downloaded first if missing). Raises DatasetError with the fix in one line."""
    path = Path(arg).expanduser()
    if path.exists():
        return path
    names = SOURCES.get(kind)
    if names is None or _looks_like_path(arg):
        hint = f"; or name one of {_known(kind)}" if names else ""
        raise DatasetError(f"dataset spec {spec!r}: {path} does not exist{hint}")
    source = names.get(arg.lower().replace("-", "_"))
    if source is None:
        raise DatasetError(
            f"dataset spec {spec!r}: {arg!r} is neither an existing path nor a known name; "
            f"names: {_known(kind)}"
        )
    return fetch(source, spec)


def fetch(source: Source, spec: str) -> Path:
    """The cached copy of `source`, downloading the files it lacks; every file checked against its sha256."""
    root = cache_dir()
    folder = root / source.folder
    for file in source.files:
        local = folder / file
        if local.is_file():
            _check(local, spec, f"a cached file that is not the published one; delete {local} to download it again")
        else:
            _download(source, file, folder, spec)
    return root / source.target


def _download(source: Source, file: str, folder: Path, spec: str) -> None:
    """Download one file into a temporary folder beside `folder`, check it, then move it into place."""
    url = source.url(file)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    except OSError as exc:
        raise DatasetError(
            f"dataset spec {spec!r}: cannot create the cache folder {folder} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    try:
        try:
            fetched = Path(download_url(url, str(tmp), log=True, filename=file))
        except OSError as exc:  # URLError, HTTPError, ssl and socket errors are all OSErrors
            raise DatasetError(
                f"dataset spec {spec!r}: cannot download {url} ({getattr(exc, 'reason', exc)}); offline, "
                f"put {_what(source)} from {source.base_url}/ into {folder} "
                f"or pass a path ({source.kind}:/path/to/{source.name})"
            ) from None
        _check(fetched, spec, f"refused and deleted the download from {url}")
        os.replace(fetched, folder / file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(path: Path, spec: str, consequence: str) -> None:
    """Raise unless `path` has the recorded sha256 (files with none recorded pass)."""
    expected = _SHA256.get(path.name)
    if expected is None:
        return
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise DatasetError(
            f"dataset spec {spec!r}: {path.name} has sha256 {actual[:16]}..., expected {expected[:16]}...: "
            f"{consequence}"
        )


def _looks_like_path(arg: str) -> bool:
    """Names are bare words: anything with a folder separator, a leading dot or `~`, or a suffix is a path."""
    return any(sep in arg for sep in ("/", os.sep)) or arg.startswith((".", "~")) or Path(arg).suffix != ""


def _what(source: Source) -> str:
    """The files a user must fetch by hand: `tolokers.npz`, or `the 8 files ind.cora.*`."""
    if len(source.files) == 1:
        return source.files[0]
    return f"the {len(source.files)} files {source.files[0].rsplit('.', 1)[0]}.*"


def _known(kind: str) -> str:
    return ", ".join(s.name for s in SOURCES.get(kind, {}).values())
