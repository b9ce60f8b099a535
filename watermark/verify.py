"""The verifier: which issued model is this file, and how sure are we.

Reads the suspect's kernels (in a child process: watermark.sandbox), refuses non-finite weights, aligns the
suspect to the base model each ledger record names, subtracts it, correlates the residual with the codeword
of every fingerprint identity (watermark.identity: a user and a base version, under the fingerprint key version
its records name), and accuses the users whose p-value clears alpha / M, M being the identities read.
Records that cannot be scored (a signature that fails, a key version or base model not at hand) are
reported, never used, and their identities still counted in M, which can only make the bound more
conservative. See watermark.detect and docs/verifier.md.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from infra.errors import KeyUnavailable
from infra.ledger import IssuedModel, Ledger, LedgerEntry, record_name
from infra.ports import BlobStore, Kms
from watermark import base
from watermark.base import BaseInvalid, BaseNotPublished
from watermark.align import align
from watermark.codeword import codeword_seed
from watermark.detect import (DEFAULT_ALPHA, Residual, log10_p_value, log10_threshold, representable,
                              z_scores)
from watermark.errors import ImplausibleWeights, IncompatibleModel, NoLedger, UnreadableModel, VerificationError
from watermark.identity import Identity
from watermark.reader import ReadModel
from watermark.sandbox import file_sha256, probe_activations_isolated, read_model_isolated, snapshot

DEFAULT_MAX_ACCUSED = 3
MANY_ACCUSED = "needs review: unusually many accused"
# Below this share of a hidden layer's base neurons matched, "nobody accused" may be a disguised copy's doing.
MIN_MATCHED_SHARE = 0.75


@dataclass(frozen=True)
class Candidate:
    """One fingerprint identity (user, base model version, fingerprint key version) and its score; every issued
    model of that identity carries its codeword, so all of them are named."""

    user_id: str
    model_ids: tuple[str, ...]  # the identity's issued models whose records verified, in ledger order
    score: float  # z
    log10_p_value: float
    fingerprint_key_id: str
    fingerprint_scheme: str
    base_model_version: str
    accused: bool

    @property
    def p_value(self) -> float | None:
        return representable(self.log10_p_value)

    def to_dict(self) -> dict:
        row = {"user_id": self.user_id, "model_ids": list(self.model_ids),
               "model_id": self.model_ids[0],  # for tools written before identities
               "score": self.score,
               "log10_p_value": self.log10_p_value, "fingerprint_key_id": self.fingerprint_key_id,
               "fingerprint_scheme": self.fingerprint_scheme, "base_model_version": self.base_model_version,
               "accused": self.accused}
        if self.p_value is not None:
            row["p_value"] = self.p_value
        return row


@dataclass(frozen=True)
class Verdict:
    file_sha256: str
    format: str
    alignment: list[str]
    identities_ranked: int  # M: the distinct fingerprint identities of the records read (see `verify`)
    identities_scored: int
    records_read: int  # issued-model records, valid or not
    alpha: float
    log10_p_threshold: float
    max_accused: int
    accused: list[str]
    candidates: list[Candidate]
    excluded_records: list[str] = field(default_factory=list)
    review_reasons: list[str] = field(default_factory=list)  # why a person should look before anyone acts
    accused_records: list[LedgerEntry] = field(default_factory=list)  # signature checked
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every scored model's z, for the report

    @property
    def p_threshold(self) -> float | None:
        return representable(self.log10_p_threshold)

    @property
    def needs_review(self) -> bool:
        return bool(self.review_reasons)

    def to_dict(self) -> dict:
        body = {
            "file_sha256": self.file_sha256,
            "format": self.format,
            "alignment": self.alignment,
            "identities_ranked": self.identities_ranked,
            "identities_scored": self.identities_scored,
            "models_ranked": self.identities_ranked,  # M, under the name tools written before identities read
            "models_scored": self.identities_scored,
            "records_read": self.records_read,
            "alpha": self.alpha,
            "log10_p_threshold": self.log10_p_threshold,
            "accused": self.accused,
            "max_accused": self.max_accused,
            "needs_review": self.needs_review,
            "review_reasons": self.review_reasons,
            "candidates": [c.to_dict() for c in self.candidates],
            "excluded_records": self.excluded_records,
        }
        if self.p_threshold is not None:
            body["p_threshold"] = self.p_threshold
        return body

    def to_json(self) -> str:
        """Strict JSON: a value JSON cannot hold (NaN, infinity) is an error, never written."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def verify_file(
    path: Path,
    ledger: Ledger,
    kms: Kms,
    models: BlobStore,
    *,
    read: Callable[[Path], ReadModel] = read_model_isolated,
    run: Callable[[Path, np.ndarray], list[np.ndarray]] = probe_activations_isolated,
    **options,
) -> Verdict:
    """Copy the file at `path` aside, take its digest, read the copy and run it on each base model's probe
    inputs (apart, by default: watermark.sandbox) and rank every issued model against it: the bytes hashed are
    the bytes scored."""
    with tempfile.TemporaryDirectory(prefix="iml-verify-") as folder:
        copy = snapshot(Path(path), Path(folder))
        return verify(read(copy), file_sha256(copy), ledger, kms, models,
                      activations=lambda probe: run(copy, probe), **options)


def verify(
    suspect: ReadModel,
    file_sha256: str,
    ledger: Ledger,
    kms: Kms,
    models: BlobStore,
    *,
    alpha: float = DEFAULT_ALPHA,
    top: int = 5,
    max_accused: int = DEFAULT_MAX_ACCUSED,
    progress: Callable[[int, int], None] = lambda done, total: None,
    activations: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> Verdict:
    """Rank every fingerprint identity in the ledger against `suspect`. `activations` runs the suspect on a
    base model's probe inputs (watermark.reader.probe_activations), for alignment by function; without it
    (or for a SavedModel, which is not run) alignment goes by the weights alone. M counts the distinct identities of
    the records read, and each record that names none (unreadable, malformed, an unknown scheme) as one more:
    never fewer than the codewords that could be scored. Signatures are checked for the records of the
    identities that are shown or accused; a record whose signature fails is reported and never used."""
    if not (0 < alpha < 1 and math.isfinite(alpha)):
        raise VerificationError(f"alpha must lie strictly between 0 and 1, not {alpha!r}")
    check_finite(suspect)
    entries = list(ledger.entries("issued", checked=False))
    if not entries:
        raise NoLedger("the ledger holds no record of an issued model")
    excluded = [f"{e.name}: {e.problem}" for e in entries if e.valid is False]
    groups: dict[str, dict[Identity, list[_Record]]] = defaultdict(lambda: defaultdict(list))
    nameless = len(excluded)
    for entry in entries:
        if entry.valid is False:
            continue
        try:
            issued = IssuedModel.from_record(entry.record)
            identities = Identity.of_record(issued)
        except ValueError as error:
            excluded.append(f"{entry.name}: {error}")
            nameless += 1
            continue
        if base.VERSION.match(issued.base_model_version):
            for identity in identities:
                groups[issued.base_model_version][identity].append(_Record(entry, issued))
        else:
            excluded.append(f"{entry.name}: the record names no valid base model version")
            nameless += 1
    identities = nameless + sum(len(group) for group in groups.values())
    threshold = log10_threshold(identities, alpha)
    scored: list[tuple[float, Identity, list[_Record]]] = []
    alignment_report = [f"the file's graph, folded to the base model's form: {note}"
                        + (f" ({count} times)" if count > 1 else "") for note, count in Counter(suspect.folded).items()]
    weak_alignment: list[str] = []
    ambiguous: list[str] = []
    incompatible: list[IncompatibleModel] = []
    for version, group in sorted(groups.items()):
        records = list({id(record): record for members in group.values() for record in members}.values())
        try:
            published = base.load(models, version)
        except (BaseNotPublished, BaseInvalid) as error:
            excluded += [f"{r.entry.name}: base model {version!r} is not at hand ({error})" for r in records]
            continue
        try:
            ran = _run(activations, published)
            aligned = align(suspect.kernels, [layer.kernel for layer in published.layers],
                            suspect_kinds=suspect.layer_kinds, base_kinds=[layer.kind for layer in published.layers],
                            activations=ran)
        except IncompatibleModel as error:
            incompatible.append(error)
            excluded += [f"{r.entry.name}: the file cannot descend from base model {version!r} ({error})"
                         for r in records]
            continue
        alignment_report += [f"{version}: {line}" for line in aligned.report]
        if not aligned.functional:
            alignment_report.append(f"{version}: aligned by the weights alone: the file was not run on the probe "
                                    f"inputs")
        if ran == []:  # a form the verifier does not run (a SavedModel)
            ambiguous.append(f"the file's form is not run on the probe inputs, so alignment to {version} went "
                             f"by the weights alone")
        if aligned.ambiguous:
            ambiguous.append(f"alignment to {version} found {aligned.ambiguous} base neurons with two working "
                             f"candidates of comparable weight")
        weak_alignment += [f"alignment to {version} matched {found} of {total} base neurons of hidden layer {layer}"
                           for layer, (found, total) in enumerate(aligned.matched, start=1)
                           if found < MIN_MATCHED_SHARE * total]
        residual = Residual.of(aligned.kernels, published)
        seeds, kept = _codeword_seeds(kms, group, excluded)
        scored += [(z, identity, group[identity])
                   for z, identity in zip(z_scores(residual, seeds, progress=progress).tolist(), kept)]
    if not scored:
        if incompatible and len(incompatible) == len(groups):
            raise incompatible[0]
        raise NoLedger(f"none of the {len(entries)} issued-model records can be scored: "
                       + "; ".join(excluded[:3]) + (" ..." if len(excluded) > 3 else ""))
    candidates, checked_entries = _candidates(scored, ledger, threshold, top, excluded)
    accused = sorted({c.user_id for c in candidates if c.accused})
    review = []
    if len(accused) > max_accused:
        review.append(f"{MANY_ACCUSED} ({len(accused)} users, more than --max-accused {max_accused})")
    excluded = list(dict.fromkeys(excluded))  # a record of two identities (no scheme) is listed once
    if not accused and excluded:
        review.append(f"needs review: nobody accused, but {len(excluded)} issued-model records could not be "
                      f"scored and the source may be among them")
    if ambiguous:
        review.append(f"needs review: {'; '.join(ambiguous)}: the file may combine several models, and an "
                      f"accusation may name whoever's weights were planted")
    if not accused and weak_alignment:
        review.append(f"needs review: nobody accused, but {'; '.join(weak_alignment)}: the file may be a "
                      f"disguised copy")
    return Verdict(
        file_sha256=file_sha256,
        format=suspect.format,
        alignment=alignment_report,
        identities_ranked=identities,
        identities_scored=len(scored),
        records_read=len(entries),
        alpha=alpha,
        log10_p_threshold=threshold,
        max_accused=max_accused,
        accused=accused,
        candidates=candidates[:top] + [c for c in candidates[top:] if c.accused],
        excluded_records=excluded,
        review_reasons=review,
        accused_records=list({model_id: checked_entries[model_id]
                              for c in candidates if c.accused for model_id in c.model_ids}.values()),
        scores=np.array([z for z, _, _ in scored]),
    )


def _run(activations: Callable[[np.ndarray], list[np.ndarray]] | None,
         published: base.PublishedBase) -> list[np.ndarray] | None:
    """The suspect's activations on the base's probe inputs (None: not asked for; []: a form that is not run);
    a file that does not run on them cannot be analysed against that base (IncompatibleModel)."""
    if activations is None:
        return None
    try:
        return activations(published.probe)
    except UnreadableModel as error:
        raise IncompatibleModel(f"the file does not run on the base model's probe inputs: {error}") from None


def check_finite(suspect: ReadModel) -> None:
    """Refuse, naming the layer, any weight that is NaN or infinite."""
    for kind, arrays in (("kernel", suspect.kernels), ("bias", suspect.biases)):
        for layer, array in enumerate(arrays, start=1):
            if not np.all(np.isfinite(array)):
                raise ImplausibleWeights(f"dense layer {layer}", f"the {kind} holds a weight that is not finite")


@dataclass(frozen=True)
class _Record:
    entry: LedgerEntry  # as read, its signature not yet checked
    issued: IssuedModel


def _codeword_seeds(kms: Kms, group: dict[Identity, list[_Record]], excluded: list[str]):
    """Each identity's codeword seed under the key version it names; the records of identities whose version
    is unavailable are excluded (one KMS refusal settles a version)."""
    seeds, kept, unavailable = [], [], {}
    for identity, records in group.items():
        version = identity.key_id
        if version not in unavailable:
            try:
                seeds.append(codeword_seed(kms, identity))
                kept.append(identity)
                continue
            except KeyUnavailable as error:
                unavailable[version] = str(error)
        excluded += [f"{record.entry.name}: fingerprint key version {version!r} is unavailable "
                     f"({unavailable[version]})" for record in records]
    return seeds, kept


def _candidates(scored: list[tuple[float, Identity, list[_Record]]], ledger: Ledger, threshold: float, top: int,
                excluded: list[str]):
    """Best first: check signatures until `top` identities are shown and every accusable one is settled. A
    record is used only if its signature verifies, it reads as it did when it was scored, and it lies where its
    model id puts it; an identity stands on the records of it that are used, and on none without one."""
    scored.sort(key=lambda item: item[0], reverse=True)
    candidates: list[Candidate] = []
    checked_entries: dict[str, LedgerEntry] = {}
    checks: dict[str, LedgerEntry] = {}  # a record of two identities (no scheme) is checked once
    for z, identity, records in scored:
        log10_p = log10_p_value(z)
        if len(candidates) >= top and log10_p > threshold:
            break
        used = []
        for record in records:
            name, issued = record.entry.name, record.issued
            if name not in checks:
                checks[name] = ledger.check(record.entry)
            checked = checks[name]
            if not checked.valid:
                excluded.append(f"{name}: {checked.problem}")
            elif checked.record != record.entry.record:
                excluded.append(f"{name}: the record changed while it was being verified")
            elif name != record_name(issued.model_id, IssuedModel.KIND):
                excluded.append(f"{name}: not where its model id puts an issued-model record")
            else:
                used.append(issued)
                checked_entries[issued.model_id] = checked
        if not used:
            continue
        candidates.append(Candidate(
            user_id=used[0].user_id, model_ids=tuple(issued.model_id for issued in used), score=z,
            log10_p_value=log10_p, fingerprint_key_id=identity.key_id, fingerprint_scheme=identity.scheme,
            base_model_version=used[0].base_model_version, accused=log10_p <= threshold))
    return candidates, checked_entries


__all__ = ["Candidate", "Verdict", "VerificationError", "check_finite", "verify", "verify_file"]
