"""The bundle contract: the one definition of what `distill` writes and `serve` reads.

Torch-free on purpose (numpy + pydantic only): the service imports it without pulling in the
training stack, and the job writes through it, so there is no second copy of any rule.

- `bundle.manifest`: the typed, versioned `Manifest` (unknown keys rejected).
- `bundle.files`: array specs, sha256, the version digest, reading and verifying (into memory).
- `bundle.ids`: what a node id is (int64 or string) and the external id -> internal index lookup.
- `bundle.edge_log`: the service's graph write log, read side (the service replays it, `distill
  refresh --edge-log` folds it into the next bundle).
- `bundle.signing`: optional HMAC signatures of the manifest.
- `bundle.publish`: atomic publication (`staging`: one RENAME_EXCHANGE swap), stale-folder cleanup.
- `bundle.typed`: typed (meta-path) bundles: the node types of a heterogeneous graph and the one rule
  from a new node's typed links to its meta-path neighbours.
- `bundle.policy`: the neighbourhood policy kernels: neighbour ranking and pruning, propagation
  weights, CSR, k-hop neighbourhoods, dense blocks and new-node rows.

docs/bundle.md explains the layout; this package is its executable form.
"""

from bundle.errors import BundleInvalid
from bundle.manifest import SCHEMA_VERSION, Manifest

__all__ = ["SCHEMA_VERSION", "BundleInvalid", "Manifest"]
