"""Optional bundle signatures: HMAC-SHA256 of `manifest.json`'s bytes under a shared key.

The manifest lists the sha256 of every file and the version digest, so signing its bytes signs the
whole bundle. The signature lives beside it in `manifest.sig` (it cannot be inside what it signs).
A job given a key (`DISTILL_BUNDLE_KEY`) signs what it writes; a service given a key
(`SERVE_BUNDLE_KEY`) refuses a bundle whose signature is missing or wrong, so only a holder of the
key can produce a bundle it will serve. Without a key nothing is signed or checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from bundle.errors import BundleInvalid

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32
JOB_KEY_ENV = "DISTILL_BUNDLE_KEY"  # the service's key is its setting bundle_key (SERVE_BUNDLE_KEY)


def check_key(key: bytes, source: str) -> bytes:
    """A key must be long enough to be a key, not a password -> `key`; ValueError naming `source`."""
    if len(key) < MIN_KEY_BYTES or len(set(key)) < 8:
        raise ValueError(f"{source} must be at least {MIN_KEY_BYTES} bytes with real entropy; generate one with "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    return key


def key_from_env(var: str) -> bytes | None:
    """The key in environment variable `var` (None when unset or empty); ValueError if too weak."""
    value = os.environ.get(var, "")
    return check_key(value.encode(), var) if value else None


def signature(raw_manifest: bytes, key: bytes) -> str:
    return hmac.new(key, raw_manifest, hashlib.sha256).hexdigest()


def sign(root: Path, key: bytes) -> None:
    """Write root/manifest.sig for the manifest now at root/manifest.json."""
    raw = (root / "manifest.json").read_bytes()
    body = {"algorithm": ALGORITHM, "signature": signature(raw, key)}
    (root / SIGNATURE_FILE).write_text(json.dumps(body) + "\n")


def verify(root: Path, raw_manifest: bytes, key: bytes) -> None:
    """Raise BundleInvalid unless root/manifest.sig signs exactly `raw_manifest` under `key`."""
    path = root / SIGNATURE_FILE
    if path.is_symlink() or not path.is_file():
        raise BundleInvalid(f"the bundle is not signed ({SIGNATURE_FILE} is missing) and this reader requires a "
                            f"signature; sign it by running the job with {JOB_KEY_ENV} set", {"file": SIGNATURE_FILE})
    try:
        body = json.loads(path.read_bytes())
        algorithm, found = body["algorithm"], body["signature"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleInvalid(f"{SIGNATURE_FILE} is malformed: {exc!r}", {"file": SIGNATURE_FILE}) from None
    if algorithm != ALGORITHM or not isinstance(found, str):
        raise BundleInvalid(f"{SIGNATURE_FILE}: unsupported algorithm {algorithm!r}; expected {ALGORITHM}",
                            {"file": SIGNATURE_FILE})
    if not hmac.compare_digest(found, signature(raw_manifest, key)):
        raise BundleInvalid("the manifest's signature does not match: it was not signed with this key, or the "
                            "manifest changed after signing", {"file": SIGNATURE_FILE})
