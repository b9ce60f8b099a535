"""The verifier: which issued model is this file, and how sure are we.

Reads the suspect's kernels, subtracts the base model it was made from, correlates the residual with the
codeword of every issued model in the ledger (records whose signature fails are reported and left out),
and accuses the users whose p-value clears alpha / (number of issued models); see watermark.detect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from functions import base_model
from infra.ledger import Ledger, LedgerEntry
from infra.ports import BlobStore, Kms
from watermark.align import IncompatibleModel, align
from watermark.codeword import codeword_seed
from watermark.detect import DEFAULT_ALPHA, accusation_threshold, p_value, weighted_residual, z_scores
from watermark.reader import ReadModel, UnreadableModel


@dataclass(frozen=True)
class Candidate:
    user_id: str
    model_id: str
    score: float
    p_value: float


@dataclass(frozen=True)
class Verdict:
    file_sha256: str
    format: str
    alignment: list[str]
    models_ranked: int
    alpha: float
    p_threshold: float
    accused: list[str]
    candidates: list[Candidate]
    excluded_records: list[str] = field(default_factory=list)
    accused_records: list[LedgerEntry] = field(default_factory=list)  # signature checked
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every issued model's z, for the report

    def to_dict(self) -> dict:
        return {
            "file_sha256": self.file_sha256,
            "format": self.format,
            "alignment": self.alignment,
            "models_ranked": self.models_ranked,
            "alpha": self.alpha,
            "p_threshold": self.p_threshold,
            "accused": self.accused,
            "candidates": [c.__dict__ for c in self.candidates],
            "excluded_records": self.excluded_records,
        }


class NoLedger(ValueError):
    """There is no issued model to compare against."""


def verify(
    suspect: ReadModel,
    file_sha256: str,
    ledger: Ledger,
    kms: Kms,
    models: BlobStore,
    *,
    alpha: float = DEFAULT_ALPHA,
    top: int = 5,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Verdict:
    """Rank every issued model in the ledger against `suspect`. Signatures are checked for the records that
    are shown or accused; a record whose signature fails is reported and never used. Every record read counts
    in the union bound, checked or not, which can only make the bound more conservative."""
    entries = [entry for entry in ledger.entries("issued", checked=False)]
    excluded = [f"{e.name}: {e.problem}" for e in entries if e.valid is False]
    entries = [e for e in entries if e.valid is not False]
    if not entries:
        raise NoLedger("the ledger holds no record of an issued model")
    threshold = accusation_threshold(len(entries), alpha)
    scored: list[tuple[float, LedgerEntry]] = []
    alignment_report: list[str] = []
    for version in sorted({e.record.get("base_model_version", "") for e in entries}):
        group = [e for e in entries if e.record.get("base_model_version", "") == version]
        base_kernels = base_model.load_kernels(models, version)
        aligned = align(suspect.kernels, base_kernels)
        alignment_report += [f"{version}: {line}" for line in aligned.report]
        residual = weighted_residual(aligned.kernels, base_kernels)
        seeds = [codeword_seed(kms, e.record["model_id"]) for e in group]
        scores = z_scores(residual, seeds, progress=progress)
        scored += zip(scores.tolist(), group)
    scored.sort(key=lambda pair: pair[0], reverse=True)
    candidates: list[Candidate] = []
    checked_entries: dict[str, LedgerEntry] = {}
    for z, entry in scored:  # best first; check signatures until `top` are shown and every accusable one is settled
        if len(candidates) >= top and p_value(z) > threshold:
            break
        checked = ledger.check(entry)
        if not checked.valid:
            excluded.append(f"{entry.name}: {checked.problem}")
            continue
        candidates.append(Candidate(checked.record["user_id"], checked.record["model_id"], z, p_value(z)))
        checked_entries[checked.record["model_id"]] = checked
    accused = sorted({c.user_id for c in candidates if c.p_value <= threshold})
    return Verdict(
        file_sha256=file_sha256,
        format=suspect.format,
        alignment=alignment_report,
        models_ranked=len(entries),
        alpha=alpha,
        p_threshold=threshold,
        accused=accused,
        candidates=candidates[:top] + [c for c in candidates[top:] if c.user_id in accused],
        excluded_records=excluded,
        accused_records=[checked_entries[c.model_id] for c in candidates if c.p_value <= threshold],
        scores=np.array([z for z, _ in scored]),
    )


__all__ = ["Candidate", "IncompatibleModel", "NoLedger", "UnreadableModel", "Verdict", "verify"]
