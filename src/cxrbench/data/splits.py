"""Train/val/test splits and nested label fractions, made once per dataset and stored with a hash.

Rules (PROTOCOLS.md §1, seed 42, stratified):

| dataset | test | val | train |
|---|---|---|---|
| chexpert | official ``valid.csv`` (frontal) | ``min(5000, 15%)`` of frontal train | the rest |
| rsna | 20% | 20% | 60% (MGCA's 16,010 / 5,337 / 5,337) |
| siim | 15% | 15% | 70% (MGCA) |
| objectcxr | official ``dev.csv`` | 10% of ``train.csv`` | 90% |
| covidx | official ``test.txt`` | 20% of ``train.txt`` | 80% |
| mimic | official ``test`` | official ``validate`` | official ``train`` (no fractions) |

Strata: the positive class for binary datasets, the class for COVIDx, and for CheXpert the rarest
competition class an image is positive for (``none`` otherwise). Ids are sorted before any random
draw, so the same files in another row order give the same splits.

Label fractions are **nested**: the training ids are put once into a stratified systematic order
(each stratum shuffled with its own generator, item ``r`` of a stratum of size ``n`` placed at key
``(r + 0.5) / n``) and a fraction ``f`` is the first ``round(f * N)`` ids of that order, so 1% ⊂ 10%
⊂ 100% and the subsets do not depend on the training seed. A fraction that leaves a class with no
positive example is an error.

Everything is written to ``<dataset folder>/cxrbench-splits/``: ``train.txt``, ``val.txt``,
``test.txt``, ``train_order.tsv`` (id, positive classes) and ``splits.json`` (counts, sha256 of each
file, the split hash, and the fingerprint of what was read: the sorted ids with their strata and
official parts). Stored splits are reused while the official files give the same fingerprint; if
they change (a different download), loading is refused until the splits are remade with ``--force``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.data import formats
from cxrbench.errors import CxrbenchError, DataFormatError
from cxrbench.utils.io import atomic_write_text, sha256_file

SPLIT_SEED = 42
SPLITS_DIR = "cxrbench-splits"
PARTS = ("train", "val", "test")
STANDARD_FRACTIONS = (0.01, 0.1, 1.0)


@dataclass(frozen=True)
class Item:
    """One splittable example: id, stratum, positive class names, fixed part (official test)."""

    id: str
    stratum: str
    classes: tuple[str, ...]
    fixed: str | None = None


@dataclass(frozen=True)
class Rule:
    items: tuple[Item, ...]
    val: float  # fraction of the non-fixed pool that goes to val
    test: float  # fraction of the non-fixed pool that goes to test
    val_cap: int | None  # at most this many val ids
    class_names: tuple[str, ...]  # every class a fraction must keep a positive of


@dataclass(frozen=True)
class Splits:
    """A dataset's stored splits."""

    dataset: str
    directory: Path
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    train_order: tuple[tuple[str, tuple[str, ...]], ...]
    class_names: tuple[str, ...]
    split_hash: str

    def part(self, name: str) -> tuple[str, ...]:
        if name not in PARTS:
            raise ValueError(f"split part must be one of {PARTS}, got {name!r}")
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def fraction(self, fraction: float) -> list[str]:
        """The training ids of a label fraction (nested, identical for every training seed)."""
        if not 0.0 < fraction <= 1.0:
            raise CxrbenchError(f"a label fraction must be in (0, 1], got {fraction}")
        n = max(1, round(fraction * len(self.train_order)))
        chosen = self.train_order[:n]
        counts = Counter(c for _, classes in chosen for c in classes)
        empty = [c for c in self.class_names if counts[c] == 0]
        if empty:
            raise CxrbenchError(
                f"{self.dataset}: label fraction {fraction:g} ({n} of {len(self.train_order)} "
                f"training images) leaves {', '.join(repr(c) for c in empty)} with zero positive "
                "examples; use a larger fraction or a larger dataset"
            )
        return [i for i, _ in chosen]


# ----------------------------------------------------------------------------------- dataset rules


def _read(key: str, root: Path, index: Any) -> Any:
    """The dataset's index: the one its caller already read, or read now."""
    return index if index is not None else formats.READERS[key].read(root)


def _chexpert_rule(root: Path, index: Any = None) -> Rule:
    from cxrbench.data.formats import chexpert

    index = _read("chexpert", root, index)
    frontal = [r for r in index.images if r.frontal]
    names = tuple(chexpert.COMPETITION_CLASSES)
    labels = {
        r.path: tuple(n for n, v in zip(names, r.competition_labels(), strict=True) if v > 0.5)
        for r in frontal
    }
    prevalence = Counter(c for cs in labels.values() for c in cs)

    def stratum(classes: tuple[str, ...]) -> str:
        return min(classes, key=lambda c: (prevalence[c], c)) if classes else "none"

    items = tuple(
        Item(
            r.path, stratum(labels[r.path]), labels[r.path], "test" if r.split == "valid" else None
        )
        for r in frontal
    )
    return Rule(items, 0.15, 0.0, 5000, names)


def _binary_rule(key: str, root: Path, val: float, test: float, index: Any = None) -> Rule:
    index = _read(key, root, index)
    items = []
    for r in index.images:
        positive = bool(r.target) if key == "rsna" else bool(r.rles)
        items.append(
            Item(_record_id(key, r), str(int(positive)), ("positive",) if positive else ())
        )
    return Rule(tuple(items), val, test, None, ("positive",))


def _objectcxr_rule(root: Path, index: Any = None) -> Rule:
    index = _read("objectcxr", root, index)
    items = tuple(
        Item(
            r.image_name,
            str(int(bool(r.objects))),
            ("object",) if r.objects else (),
            "test" if r.split == "dev" else None,
        )
        for r in index.images
    )
    return Rule(items, 0.1, 0.0, None, ("object",))


def _covidx_rule(root: Path, index: Any = None) -> Rule:
    index = _read("covidx", root, index)
    items = tuple(
        Item(r.filename, r.label, (r.label,), "test" if r.split == "test" else None)
        for r in index.images
    )
    return Rule(items, 0.2, 0.0, None, tuple(index.classes))


def _mimic_rule(root: Path, index: Any = None) -> Rule:
    index = _read("mimic", root, index)
    part = {"train": None, "validate": "val", "test": "test"}
    items = tuple(Item(r.dicom_id, "all", (), part[r.split]) for r in index.frontal())
    return Rule(items, 0.0, 0.0, None, ())


def _record_id(key: str, record: object) -> str:
    attr = {"rsna": "patient_id", "siim": "image_id"}[key]
    return str(getattr(record, attr))


def _rule(dataset: str, root: Path, index: Any = None) -> Rule:
    if dataset == "chexpert":
        return _chexpert_rule(root, index)
    if dataset == "rsna":
        return _binary_rule("rsna", root, 0.2, 0.2, index)
    if dataset == "siim":
        return _binary_rule("siim", root, 0.15, 0.15, index)
    if dataset == "objectcxr":
        return _objectcxr_rule(root, index)
    if dataset == "covidx":
        return _covidx_rule(root, index)
    if dataset == "mimic":
        return _mimic_rule(root, index)
    raise CxrbenchError(
        f"no split rule for dataset {dataset!r}; known: {', '.join(formats.READERS)}"
    )


# ----------------------------------------------------------------------------------- the algorithm


def _rng(*keys: object) -> np.random.Generator:
    digest = hashlib.sha256("/".join(str(k) for k in keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _by_stratum(items: Sequence[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i.id):
        groups[item.stratum].append(item)
    return dict(sorted(groups.items()))


def assign_parts(rule: Rule, seed: int = SPLIT_SEED) -> dict[str, list[Item]]:
    """Stratified train/val/test assignment of the items that the official files do not fix."""
    parts: dict[str, list[Item]] = {p: [] for p in PARTS}
    pool = [i for i in rule.items if i.fixed is None]
    for item in rule.items:
        if item.fixed is not None:
            parts[item.fixed].append(item)
    n_val = round(rule.val * len(pool))
    if rule.val_cap is not None:
        n_val = min(n_val, rule.val_cap)
    n_test = round(rule.test * len(pool))
    for stratum, group in _by_stratum(pool).items():
        order = _rng(seed, "split", stratum).permutation(len(group))
        share = len(group) / max(1, len(pool))
        k_val, k_test = round(n_val * share), round(n_test * share)
        for rank, idx in enumerate(order):
            part = "val" if rank < k_val else "test" if rank < k_val + k_test else "train"
            parts[part].append(group[int(idx)])
    for name in PARTS:
        parts[name].sort(key=lambda i: i.id)
    return parts


def systematic_order(items: Sequence[Item], seed: int = SPLIT_SEED) -> list[Item]:
    """Stratified systematic order: every prefix is (close to) a stratified sample of ``items``."""
    keyed: list[tuple[float, str, int, Item]] = []
    for stratum, group in _by_stratum(items).items():
        order = _rng(seed, "fraction", stratum).permutation(len(group))
        for rank, idx in enumerate(order):
            keyed.append(((rank + 0.5) / len(group), stratum, rank, group[int(idx)]))
    keyed.sort(key=lambda t: (t[0], t[1], t[2]))
    return [t[3] for t in keyed]


# ----------------------------------------------------------------------------------- files


def _fingerprint(rule: Rule) -> str:
    rows = sorted(f"{i.id}\t{i.stratum}\t{i.fixed or ''}" for i in rule.items)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def splits_dir(dataset_root: Path) -> Path:
    return Path(dataset_root) / SPLITS_DIR


def make_splits(
    dataset: str, root: Path, *, force: bool = False, seed: int = SPLIT_SEED, index: Any = None
) -> Splits:
    """Make (or reuse) the stored splits of ``dataset`` read from its folder ``root``
    (``index``: the dataset's index when the caller has read it already)."""
    root = Path(root)
    rule = _rule(dataset, root, index)
    if not rule.items:
        raise DataFormatError(root, f"at least one {dataset} image to split", "none")
    fingerprint = _fingerprint(rule)
    directory = splits_dir(root)
    meta_path = directory / "splits.json"
    if meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint and meta.get("seed") == seed:
            return load_splits(dataset, root)
    parts = assign_parts(rule, seed)
    empty = [p for p in PARTS if not parts[p]]
    if empty:  # e.g. an empty official training listing beside a full test listing
        counts = ", ".join(f"{p} {len(parts[p])}" for p in PARTS)
        expected = f"images in every split part (train, val, test) of {dataset}"
        hint = f"run `cxrbench data inspect --dataset {dataset}` on it"
        raise DataFormatError(root, expected, counts, hint=hint)
    order = systematic_order(parts["train"], seed)
    files = {f"{p}.txt": "".join(f"{i.id}\n" for i in parts[p]) for p in PARTS}
    files["train_order.tsv"] = "".join(f"{i.id}\t{','.join(i.classes)}\n" for i in order)
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, text in files.items():
        atomic_write_text(directory / name, text)
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()
    meta = {
        "dataset": dataset,
        "seed": seed,
        "fingerprint": fingerprint,
        "counts": {p: len(parts[p]) for p in PARTS},
        "class_names": list(rule.class_names),
        "sha256": hashes,
        "split_hash": _split_hash(hashes),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return load_splits(dataset, root)


def _split_hash(hashes: dict[str, str]) -> str:
    text = "".join(f"{k}:{hashes[k]}\n" for k in sorted(hashes))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_splits(dataset: str, root: Path) -> Splits:
    """Read stored splits, verifying every file against its recorded sha256."""
    directory = splits_dir(Path(root))
    meta_path = directory / "splits.json"
    if not meta_path.is_file():
        raise DataFormatError(
            meta_path,
            "stored splits",
            "no splits.json",
            hint=f"make them with: cxrbench data splits --dataset {dataset} --root {root}",
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("dataset") != dataset:
        raise DataFormatError(meta_path, f"splits of {dataset!r}", repr(meta.get("dataset")))
    for name, digest in meta["sha256"].items():
        if sha256_file(directory / name) != digest:
            raise DataFormatError(
                directory / name,
                f"sha256 {digest[:12]}... recorded in splits.json",
                "different contents (edited or corrupted)",
                hint="remake the splits with cxrbench data splits --force",
            )
    lines = {p: _read_lines(directory / f"{p}.txt") for p in PARTS}
    order = []
    for line in _read_lines(directory / "train_order.tsv"):
        ident, _, classes = line.partition("\t")
        order.append((ident, tuple(c for c in classes.split(",") if c)))
    return Splits(
        dataset=dataset,
        directory=directory,
        train=tuple(lines["train"]),
        val=tuple(lines["val"]),
        test=tuple(lines["test"]),
        train_order=tuple(order),
        class_names=tuple(meta["class_names"]),
        split_hash=meta["split_hash"],
    )


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]
