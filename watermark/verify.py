"""The verifier: which issued model is this file, and how sure are we.

Reads the suspect's kernels, subtracts the base model it was made from, correlates the residual with the
codeword of every issued model in the ledger (records whose signature fails are reported and left out),
and accuses the users whose p-value clears alpha / (number of issued models); see watermark.detect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from functions import base_model
from infra.ledger import Ledger
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
    issued, excluded = [], []
    for entry in ledger.entries("issued"):
        if entry.valid:
            issued.append(entry.record)
        else:
            excluded.append(f"{entry.name}: {entry.problem}")
    if not issued:
        raise NoLedger("the ledger holds no valid record of an issued model")
    scored: list[Candidate] = []
    alignment_report: list[str] = []
    for version in sorted({record["base_model_version"] for record in issued}):
        records = [r for r in issued if r["base_model_version"] == version]
        base_kernels = base_model.load_kernels(models, version)
        aligned = align(suspect.kernels, base_kernels)
        alignment_report += [f"{version}: {line}" for line in aligned.report]
        residual = weighted_residual(aligned.kernels, base_kernels)
        seeds = (codeword_seed(kms, r["model_id"]) for r in records)
        for record, z in zip(records, z_scores(residual, seeds), strict=True):
            scored.append(Candidate(record["user_id"], record["model_id"], z, p_value(z)))
            if len(scored) % 256 == 0 or len(scored) == len(issued):
                progress(len(scored), len(issued))
    threshold = accusation_threshold(len(issued), alpha)
    scored.sort(key=lambda c: c.score, reverse=True)
    accused = sorted({c.user_id for c in scored if c.p_value <= threshold})
    return Verdict(
        file_sha256=file_sha256,
        format=suspect.format,
        alignment=alignment_report,
        models_ranked=len(issued),
        alpha=alpha,
        p_threshold=threshold,
        accused=accused,
        candidates=scored[:top],
        excluded_records=excluded,
    )


__all__ = ["Candidate", "IncompatibleModel", "NoLedger", "UnreadableModel", "Verdict", "verify"]
