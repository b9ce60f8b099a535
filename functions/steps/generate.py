"""Generate: admit the request, fine-tune the published base model on the user's own data, stage it."""
from __future__ import annotations

from functions import model, names, userdata, users
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
    users.admit(signup.user_id, signup.model_id, ports)
    base = model.load_or_train_base(ports.models)
    tuned = model.fine_tune(base, userdata.for_user(signup.user_id).train, fine_tune_seed(ports.kms, signup.model_id))
    artifact = names.generated_model(signup.model_id)
    put_staged(ports.staging, ports.kms, artifact, model.to_keras_bytes(tuned))
    return [ModelEvent(
        request_id=signup.request_id,
        user_id=signup.user_id,
        model_id=signup.model_id,
        device_public_key=signup.device_public_key,
        base_model_version=model.BASE_MODEL_VERSION,
        artifact=artifact,
        facts={"generated_at": ports.clock().isoformat()},
    )]
