"""Generate: read the user's data, admit the request, fine-tune the recipe's published base model on the
data's training part, stage the result with the held-out part (the watermark step measures on it; only this
step reads the user-data bucket). The base model is published beforehand (`iml base publish`); it is never trained here."""
from __future__ import annotations

from functions import base_model, model, names, recipes, userdata, users
from functions.events import ModelEvent, Signup
from infra.bootstrap import Ports
from infra.ports import Kms
from infra.staging import put_staged

FINE_TUNE_DOMAIN = b"iml-fine-tune-seed-v1\0"


def fine_tune_seed(kms: Kms, model_id: str) -> int:
    """The fine-tune's randomness: a keyed MAC of the model id under the server's fingerprint secret (domain
    separated from the codeword's), so the unmarked model cannot be rebuilt by anyone without the key (with
    it, an attacker could subtract the unmarked model from a leak and read or move the fingerprint)."""
    return int.from_bytes(kms.fingerprint_mac(FINE_TUNE_DOMAIN + model_id.encode())[:8], "big")


def handle(signup: Signup, ports: Ports) -> list[ModelEvent]:
    recipe = recipes.load(ports.settings.recipe)
    users.refuse_deleted(signup.user_id, ports)
    base = base_model.load_model(recipe, ports.models)  # refused before a request slot is taken
    data = userdata.read(ports, recipe, signup.user_id, signup.data_ref)
    users.admit(signup.user_id, signup.model_id, ports)
    tuned = recipe.fine_tune(base, data.train, fine_tune_seed(ports.kms, signup.model_id))
    artifact = names.generated_model(signup.model_id)
    put_staged(ports.staging, ports.kms, artifact, model.pack_tuned(tuned, data.held_out.x, data.held_out.y))
    return [ModelEvent(
        request_id=signup.request_id,
        user_id=signup.user_id,
        model_id=signup.model_id,
        device_public_key=signup.device_public_key,
        base_model_version=recipe.base_version,
        recipe=recipe.name,
        artifact=artifact,
        facts={"generated_at": ports.clock().isoformat()},
    )]
