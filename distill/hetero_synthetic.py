"""A deterministic heterogeneous fraud graph: users make transactions on devices, fraud on transactions.

The heterogeneous quickstart (`synthetic-hetero[:key=value,...]`, distill/data.py), needing no files.
Node types `transaction` (the labelled type: legit / fraud), `user` and `device`, each with features;
relations user-makes-transaction and transaction-uses-device, each with its reverse (`made_by`,
`used_by`), as distill/hetero.py builds ACM's.

Fraud is partly structural, as in real fraud: it comes from `rings`, each a few young, unverified
accounts sharing a few new devices (often emulators). A ring's transactions are made by its users on its devices, except
that a `takeover` share is made from a legit user's account (on a ring device), and a `camouflage`
share of legit transactions warms up ring accounts on ring devices. A transaction's own features
(amount, hour, channel) follow the fraud profile for only a `signal` share of fraud; the rest look
legit. So a model that sees who made a transaction and on which device can find fraud that the
transaction's own features hide: the typed graph shows the accounts and devices themselves, the
transaction-user-transaction and transaction-device-transaction meta-path view (what homogeneous
students are served on) only which transactions share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch_geometric.data import HeteroData

from distill.errors import DatasetError
from distill.synthetic import parse_options, stratified_masks

CLASS_NAMES = ("legit", "fraud")
TARGET = "transaction"
RING_USERS, RING_DEVICES = (2, 6), (1, 4)  # per ring, drawn uniformly in [low, high)
HOME_DEVICE = 0.9  # share of a legit user's transactions on the user's own device
CHANNELS = 3  # web, app, point of sale (one-hot)
RELATIONS = (("user", "makes", "transaction"), ("transaction", "uses", "device"))
REVERSE = {"makes": "made_by", "uses": "used_by"}


@dataclass(frozen=True)
class HeteroSyntheticConfig:
    """Parameters of the generator; every one can be set in the spec (`synthetic-hetero:transactions=500`).

    transactions, users, devices: node counts per type. rings: fraud rings (2-5 users, 1-3 devices each).
    fraud_rate: share of transactions that are fraud. signal: share of fraud whose own features follow
    the fraud profile. takeover: share of fraud made from a legit user's account. camouflage: legit
    transactions by ring accounts, as a share of the fraud count. noise: std of Gaussian noise added to
    every feature column. power: Pareto exponent of legit users' activity and devices' popularity.
    train_share: labelled share of each class (validation 20 %, test the rest). seed: seeds everything.
    """

    transactions: int = 3000
    users: int = 1500
    devices: int = 1200
    rings: int = 20
    fraud_rate: float = 0.08
    signal: float = 0.3
    takeover: float = 0.3
    camouflage: float = 0.3
    noise: float = 0.5
    power: float = 3.0
    train_share: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "transactions": self.transactions >= 20,
            "rings": self.rings >= 1,
            "users": self.users >= 2 * self.rings * (RING_USERS[1] - 1),
            "devices": self.devices >= 2 * self.rings * (RING_DEVICES[1] - 1),
            "fraud_rate": 0 < self.fraud_rate <= 0.5 and self.fraud_rate * self.transactions >= 2,
            "signal": 0.0 <= self.signal <= 1.0,
            "takeover": 0.0 <= self.takeover <= 1.0,
            "camouflage": 0.0 <= self.camouflage <= 1.0,
            "noise": self.noise >= 0,
            "power": self.power > 1.0,
            "train_share": 0 < self.train_share <= 0.7,
            "seed": self.seed >= 0,  # numpy's generators take no negative seed
        }
        for key, ok in checks.items():
            if not ok:
                raise DatasetError(f"synthetic-hetero: {key}={getattr(self, key)!r} is out of range "
                                   "(users >= 10 x rings, devices >= 6 x rings, fraud_rate x transactions >= 2)")

    @classmethod
    def parse(cls, text: str) -> HeteroSyntheticConfig:
        """Parse `key=value,key=value`; unknown keys are rejected with the list of known ones."""
        return parse_options(cls, text, "synthetic-hetero")

    def record(self) -> dict[str, Any]:
        """The options as the dataset's source records them."""
        return asdict(self)


@dataclass(frozen=True)
class Links:
    """Who made each transaction and on which device: `user` and `device` int64 [T], `y` int64 [T]."""

    user: np.ndarray
    device: np.ndarray
    y: np.ndarray
    ring_user: np.ndarray  # bool [users]: a ring's account
    ring_device: np.ndarray  # bool [devices]: a ring's device


def generate(cfg: HeteroSyntheticConfig) -> HeteroData:
    """Build the typed graph: transaction x [T, 6] (log amount, hour sin / cos, channel one-hot), y [T]
    (0 legit, 1 fraud), train/val/test_mask [T] (stratified: `train_share` / 20 % / the rest of each
    class); user x [U, 2] (log account age in days, verified); device x [D, 2] (log days since first
    seen, emulator); edges
    user-makes/made_by-transaction and transaction-uses/used_by-device, one user and device per transaction."""
    rng = np.random.default_rng(cfg.seed)
    links = _links(cfg, rng)
    data = HeteroData()
    tx = data[TARGET]
    tx.x = torch.from_numpy(_transaction_features(links.y, cfg, rng))
    tx.y = torch.from_numpy(links.y)
    for name, mask in stratified_masks(links.y, rng, cfg.train_share).items():
        tx[f"{name}_mask"] = torch.from_numpy(mask)
    data["user"].x = torch.from_numpy(_user_features(links.ring_user, cfg, rng))
    data["device"].x = torch.from_numpy(_device_features(links.ring_device, cfg, rng))
    arange = np.arange(cfg.transactions)
    for (src, rel, dst), pairs in zip(RELATIONS, ((links.user, arange), (arange, links.device)), strict=True):
        edges = torch.from_numpy(np.stack(pairs).astype(np.int64))
        data[src, rel, dst].edge_index = edges
        data[dst, REVERSE[rel], src].edge_index = edges.flip(0)
    return data


def _links(cfg: HeteroSyntheticConfig, rng: np.random.Generator) -> Links:
    """Rings take the first users and devices; legit transactions draw users by activity (power law)
    and mostly use the user's home device; fraud and camouflage use their ring's accounts and devices."""
    ring_users = rng.integers(*RING_USERS, size=cfg.rings)
    ring_devices = rng.integers(*RING_DEVICES, size=cfg.rings)
    user_start = np.concatenate([[0], ring_users.cumsum()])
    device_start = np.concatenate([[0], ring_devices.cumsum()])
    legit_users = np.arange(user_start[-1], cfg.users)
    legit_devices = np.arange(device_start[-1], cfg.devices)
    activity = rng.pareto(cfg.power - 1, size=len(legit_users)) + 1.0
    popularity = rng.pareto(cfg.power - 1, size=len(legit_devices)) + 1.0
    home = rng.choice(legit_devices, size=len(legit_users), p=popularity / popularity.sum())

    n = cfg.transactions
    y = np.zeros(n, dtype=np.int64)
    y[:int(round(cfg.fraud_rate * n))] = 1
    n_ring = int(y.sum()) + min(int(round(cfg.camouflage * y.sum())), n - int(y.sum()))
    ring = rng.integers(cfg.rings, size=n_ring)
    user = np.empty(n, dtype=np.int64)
    device = np.empty(n, dtype=np.int64)
    # Ring transactions (fraud, then camouflage): a ring account and a ring device.
    user[:n_ring] = user_start[ring] + (rng.random(n_ring) * ring_users[ring]).astype(np.int64)
    device[:n_ring] = device_start[ring] + (rng.random(n_ring) * ring_devices[ring]).astype(np.int64)
    stolen = (y[:n_ring] == 1) & (rng.random(n_ring) < cfg.takeover)
    user[:n_ring][stolen] = rng.choice(legit_users, size=int(stolen.sum()))
    # Legit transactions: an active user, the home device or (sometimes) a popular other one.
    rest = n - n_ring
    who = rng.choice(len(legit_users), size=rest, p=activity / activity.sum())
    user[n_ring:] = legit_users[who]
    away = rng.random(rest) >= HOME_DEVICE
    device[n_ring:] = np.where(away, rng.choice(legit_devices, size=rest, p=popularity / popularity.sum()),
                               home[who])
    order = rng.permutation(n)  # transaction ids carry no hint of the class
    ring_user = np.zeros(cfg.users, dtype=bool)
    ring_user[:user_start[-1]] = True
    ring_device = np.zeros(cfg.devices, dtype=bool)
    ring_device[:device_start[-1]] = True
    return Links(user[order], device[order], y[order], ring_user, ring_device)


def _transaction_features(y: np.ndarray, cfg: HeteroSyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[T, 6]: log amount, hour as sin / cos, channel one-hot; fraud's profile (larger amounts, at
    night, mostly on the web) only for a `signal` share of fraud."""
    n = len(y)
    profiled = (y == 1) & (rng.random(n) < cfg.signal)
    amount = np.where(profiled, rng.normal(5.0, 0.8, n), rng.normal(3.5, 1.0, n))
    hour = np.where(profiled, rng.normal(3.0, 2.0, n), rng.normal(14.0, 4.0, n)) % 24
    legit_channel = rng.choice(CHANNELS, size=n, p=[0.3, 0.5, 0.2])
    fraud_channel = rng.choice(CHANNELS, size=n, p=[0.8, 0.2, 0.0])
    channel = np.eye(CHANNELS)[np.where(profiled, fraud_channel, legit_channel)]
    angle = 2 * np.pi * hour / 24
    x = np.column_stack([amount, np.sin(angle), np.cos(angle), channel])
    return (x + rng.normal(0, cfg.noise, x.shape)).astype(np.float32)


def _user_features(ring_user: np.ndarray, cfg: HeteroSyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[U, 2]: log account age in days (ring accounts are young), verified (ring accounts seldom)."""
    n = len(ring_user)
    age = np.where(ring_user, rng.normal(np.log(30), 0.8, n), rng.normal(np.log(700), 0.8, n))
    verified = rng.random(n) < np.where(ring_user, 0.3, 0.8)
    x = np.column_stack([age, verified.astype(float)])
    return (x + rng.normal(0, cfg.noise, x.shape)).astype(np.float32)


def _device_features(ring_device: np.ndarray, cfg: HeteroSyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[D, 2]: log days since the device was first seen (ring devices are new), emulator flag (ring
    devices more often)."""
    n = len(ring_device)
    age = np.where(ring_device, rng.normal(np.log(10), 1.0, n), rng.normal(np.log(300), 1.0, n))
    emulator = rng.random(n) < np.where(ring_device, 0.4, 0.05)
    x = np.column_stack([age, emulator.astype(float)])
    return (x + rng.normal(0, cfg.noise, x.shape)).astype(np.float32)
