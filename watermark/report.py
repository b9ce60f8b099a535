"""The evidence report: one self-contained HTML file for people, and its JSON twin signed through KMS.

The HTML holds everything inline (the plot is a PNG data URI), so it can be archived, mailed and opened
offline. The JSON twin carries the same facts and a signature over their canonical JSON by the ledger's
signing key, so anyone with the public key (in the twin) can check that it was not edited afterwards.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from infra.ledger import canonical_json
from infra.ports import Kms
from watermark.detect import format_p, z_threshold
from watermark.errors import ReportExists
from watermark.verify import Verdict

BOUND = ("For an innocent user's fingerprint identity j, the codeword c_j is independent of the file, so by Hoeffding's "
         "inequality P(z_j >= z) <= exp(-z^2/2) whatever the file's weights; p_j = exp(-z_j^2/2), reported as "
         "log10 p_j = -z_j^2 / (2 ln 10) (p_j itself underflows a double above z = 38.6; it is never 0). A user is "
         "accused only when p_j <= alpha / M (M fingerprint identities: a user and a base model version each), so the probability of accusing any innocent "
         "user is at most alpha (docs/verifier.md).")
PRECONDITIONS = (
    "Custody of the fingerprint key: nobody who could craft the file held the fingerprint key (Cloud KMS) or "
    "a codeword derived from it; with it, anyone could be framed.",
    "No issued model ever fed a base model: a base model trained from a user's issued model would carry that "
    "user's codeword into every model made from it.",
    "The file is verified once, as it was found: it was not re-crafted from earlier verifier outputs (scores "
    "leak a little about codewords, and a file shaped by many queries is no longer independent of them).",
    "A user id is one person's: an identity is a user id and a base model version, so a user id reused for "
    "someone else, or shared, makes their models one identity.",
    "z is the file's normalised correlation with the model's codeword; log10 p is the base-10 logarithm of the "
    "bound on the chance that an innocent identity scores that high.",
    "Scope: a model trained anew on a leaked model's outputs (distillation) carries no fingerprint and names "
    "nobody: a missed accusation, never a false one.",
)


def tool_version() -> str:
    try:
        return version("iml-pipeline")
    except PackageNotFoundError:
        return "unknown"


def report_body(verdict: Verdict, *, file_name: str, command: str, parameters: dict, public_key_pem: str,
                now: datetime | None = None) -> dict:
    return {
        "tool": "iml verify",
        "tool_version": tool_version(),
        "generated_at": (now or datetime.now(timezone.utc)).isoformat(),
        "command": command,
        "parameters": parameters,
        "file": {"name": file_name, "sha256": verdict.file_sha256, "format": verdict.format},
        **{key: value for key, value in verdict.to_dict().items() if key not in ("file_sha256", "format")},
        "bound": BOUND,
        "preconditions": list(PRECONDITIONS),
        "accused_records": [
            {"object": e.name, "record": e.record, "signature": e.signature, "signing_key_id": e.signing_key_id,
             "signature_verified": bool(e.valid)} for e in verdict.accused_records
        ],
        "ledger_public_key_pem": public_key_pem,
    }


def write_report(verdict: Verdict, html_path: Path, kms: Kms, *, file_name: str, command: str,
                 parameters: dict) -> tuple[Path, Path]:
    """Write the HTML report and its signed JSON twin (same name, .json), both or neither, readable by their
    owner only; returns both paths. Everything is rendered, signed and checked in memory first; only then are
    the two files written, each to a temporary name beside its target and linked into place."""
    body = report_body(verdict, file_name=file_name, command=command, parameters=parameters,
                       public_key_pem=kms.public_key_pem().decode())
    signed = canonical_json(body)
    twin = {"report": body, "signature": base64.b64encode(kms.sign(signed)).decode(),
            "signing_key_id": kms.signing_key_id,
            "signature_algorithm": "ECDSA P-256 SHA-256 over the canonical JSON of `report`"}
    twin_text = json.dumps(twin, indent=2, sort_keys=True, allow_nan=False)
    page = _html(body, _plot(verdict))
    _check_pair(twin_text, page, kms)
    html_path, json_path = report_paths(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    _create_both({json_path: twin_text, html_path: page})
    return html_path, json_path


def report_paths(html_path: Path) -> tuple[Path, Path]:
    """The report and its twin; ReportExists when either is there already (evidence is never overwritten,
    and a report can never replace the file it is about)."""
    html_path = Path(html_path)
    json_path = html_path.with_suffix(".json")
    if json_path == html_path:
        raise ReportExists("the report's name must not end in .json: its signed twin takes that name")
    for path in (html_path, json_path):
        if os.path.lexists(path):
            raise ReportExists(f"{path} exists already: evidence is never overwritten; choose another name")
    return html_path, json_path



def _check_pair(twin_text: str, page: str, kms: Kms) -> None:
    """The twin parses as strict JSON and its signature verifies; the page is a whole document."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    twin = json.loads(twin_text, parse_constant=_refuse)
    public_key = serialization.load_pem_public_key(kms.public_key_pem())
    public_key.verify(base64.b64decode(twin["signature"]), canonical_json(twin["report"]), ec.ECDSA(hashes.SHA256()))
    if not page.rstrip().endswith("</html>"):
        raise ValueError("the HTML report is incomplete")


def _refuse(constant: str) -> None:
    raise ValueError(f"the report holds {constant}, which is not JSON")


def _create_both(contents: dict[Path, str]) -> None:
    """Each text written whole under a temporary name, then linked to its target, which must not exist (a
    link, unlike a rename, never replaces a file); on any failure every file this made is removed."""
    temporary: list[Path] = []
    created: list[Path] = []
    try:
        for target, text in contents.items():
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            temporary.append(Path(name))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(name, target)
            except FileExistsError:
                raise ReportExists(f"{target} exists already: evidence is never overwritten") from None
            created.append(target)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)


def _plot(verdict: Verdict) -> str:
    """Every issued model's score, the accusation threshold, the accused marked: a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threshold_z = z_threshold(verdict.log10_p_threshold)
    figure, axis = plt.subplots(figsize=(8, 3.6))
    scores = verdict.scores if verdict.scores.size else np.zeros(1)
    if scores.size <= 500:  # few enough to show one point each
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, scores.size)
        axis.scatter(scores, jitter, s=14, color="#1f77b4", label=f"{verdict.identities_scored} fingerprint identities")
        axis.set_yticks([])
    else:
        axis.hist(scores, bins=200, color="#1f77b4", log=True, label=f"{verdict.identities_scored} fingerprint identities")
        axis.set_ylabel("identities")
    axis.axvline(threshold_z, color="#d62728", linewidth=2, label=f"threshold z = {threshold_z:.2f}")
    for candidate in verdict.candidates:
        if candidate.accused:
            axis.axvline(candidate.score, color="#2ca02c", linewidth=2)
            axis.annotate(f"accused: {candidate.user_id}", (candidate.score, 0.5), xycoords=("data", "axes fraction"),
                          rotation=90, va="center", ha="right", color="#2ca02c")
    axis.set_xlabel("score z of each identity's codeword")
    axis.set_xlim(min(scores.min(), -4) - 0.5, max(scores.max(), threshold_z) + 2)
    axis.legend(loc="upper center")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _html(body: dict, plot_uri: str) -> str:
    e = html.escape

    def code(text: str) -> str:
        return f"<code>{e(text)}</code>"

    verdict = (f"Accused: {', '.join(body['accused'])}" if body["accused"]
               else "Nobody accused: no issued model's fingerprint is significant")
    review = "".join(f'<p class="review">{e(reason)}</p>' for reason in body["review_reasons"])
    rows = "".join(
        f"<tr><td>{e(c['user_id'])}</td><td>{'<br>'.join(map(code, c['model_ids']))}</td><td>{c['score']:.3f}</td>"
        f"<td>{c['log10_p_value']:.2f}</td><td>{format_p(c['log10_p_value'])}</td>"
        f"<td><code>{e(c['fingerprint_key_id'])}</code></td><td>{'accused' if c['accused'] else ''}</td></tr>"
        for c in body["candidates"])
    preconditions = "".join(f"<li>{e(x)}</li>" for x in body["preconditions"])
    records = "".join(
        f"<h3>{e(r['object'])}</h3><p>Signature verified: <b>{'yes' if r['signature_verified'] else 'NO'}</b> "
        f"(key <code>{e(str(r['signing_key_id']))}</code>)</p><pre>{e(json.dumps(r['record'], indent=2, sort_keys=True))}"
        f"</pre><p>Signature (base64 DER):</p><pre class=wrap>{e(str(r['signature']))}</pre>"
        for r in body["accused_records"]) or "<p>None: nobody is accused.</p>"
    excluded = "".join(f"<li>{e(x)}</li>" for x in body["excluded_records"]) or "<li>none</li>"
    alignment = "".join(f"<li>{e(x)}</li>" for x in body["alignment"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evidence report: {e(body['file']['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
pre {{ background: #f6f6f6; padding: .6rem; overflow-x: auto; }} pre.wrap {{ white-space: pre-wrap; word-break: break-all; }}
.verdict {{ font-size: 1.4rem; font-weight: bold; }}
.review {{ font-size: 1.2rem; font-weight: bold; color: #8a5300; background: #fff3cd; padding: .4rem .6rem; }}
</style></head><body>
<h1>Evidence report</h1>
<p class="verdict">{e(verdict)}</p>{review}
<h2>The file</h2>
<table><tr><th>name</th><td>{e(body['file']['name'])}</td></tr>
<tr><th>SHA-256</th><td><code>{e(body['file']['sha256'])}</code></td></tr>
<tr><th>format</th><td>{e(body['file']['format'])}</td></tr></table>
<h2>Alignment to the base model</h2><ul>{alignment}</ul>
<h2>Scores</h2>
<img id="scores" alt="score of every issued model against the threshold" src="{plot_uri}">
<p>{body['identities_ranked']} fingerprint identities (M: a user and a base model version each) in the
{body['records_read']} issued-model records read, {body['identities_scored']} scored; alpha =
{body['alpha']:.3g}; accusation when p &le; {format_p(body['log10_p_threshold'])}, that is log<sub>10</sub> p &le;
{body['log10_p_threshold']:.2f} (z &ge; {z_threshold(body['log10_p_threshold']):.2f}).</p>
<table><tr><th>user</th><th>issued models</th><th>score z</th><th>log<sub>10</sub> p</th><th>p-value</th>
<th>fingerprint key version</th><th></th></tr>{rows}</table>
<h2>The bound</h2><p>{e(body['bound'])}</p>
<h2>What the number rests on</h2><ul>{preconditions}</ul>
<h2>Ledger records of the accused</h2>{records}
<h2>Ledger records excluded</h2><ul>{excluded}</ul>
<h2>Reproduce</h2>
<p>Tool {e(body['tool'])} {e(body['tool_version'])}, generated {e(body['generated_at'])}, parameters
<code>{e(json.dumps(body['parameters'], sort_keys=True))}</code>:</p><pre>{e(body['command'])}</pre>
<p>The signed JSON twin of this report lies beside it (same name, <code>.json</code>); the ledger's public
key:</p><pre>{e(body['ledger_public_key_pem'])}</pre>
</body></html>
"""
