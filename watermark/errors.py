"""Why the verifier gives no verdict. Each is final for the file at hand (`iml verify` exits 2 with the text).

The texts say what is wrong with the file or the ledger and where (a layer, a record); they never carry key
material, and they quote no weight of the file beyond a magnitude.
"""
from __future__ import annotations


class VerificationError(Exception):
    """No verdict can be given; the text says why."""

    kind = "error"


class UnreadableModel(VerificationError):
    """The file is not a model this reader knows, it holds no dense layers, or its parser failed or timed out."""

    kind = "unreadable"


class IncompatibleModel(VerificationError):
    """The suspect cannot be a descendant of the base model: a different input, output, depth or width."""

    kind = "incompatible"


class ImplausibleWeights(VerificationError):
    """A weight is not finite, or lies further from the base model than any model made from it does."""

    kind = "implausible"

    def __init__(self, layer: str, problem: str):
        super().__init__(f"{layer}: {problem}")
        self.layer = layer


class NoLedger(VerificationError):
    """There is no issued model to compare against, or none whose keys and base model are at hand."""

    kind = "no-ledger"


class ScoringError(VerificationError):
    """A score broke an invariant that holds for every input (finite, |z| <= ||a||_1/||a||_2): a defect of the
    verifier, reported instead of a verdict."""

    kind = "internal"


class ReportExists(VerificationError):
    """The evidence report or its twin would replace a file: evidence is never overwritten."""

    kind = "report-exists"
