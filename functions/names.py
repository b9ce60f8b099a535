"""Every object name and state key the pipeline writes: built here, parsed back here, nowhere else.

    staging bucket    generated/<model_id>.zip          a fine-tuned model and the user's held-out data, on
                                                        their way to the watermark
                      watermarked/<model_id>.tflite     a fingerprinted export on its way to encrypt
    delivery bucket   <model_id>.iml                    the sealed model a device downloads
    state bucket      claims/<step>/<model_id>/<epoch>  a delivery works on a model at a step (functions/progress.py)
                      outbox/<step>/<model_id>          a step's outputs for a model, recorded before publication
                      done/<step>/<model_id>            a step completed for a model: a redelivery is skipped
                      users/<user_id>/models/<model_id> a model admitted for a user (deletion)
                      slots/<user_id>/<period>/<slot>   the request limit's slots: one per model admitted in a period
                      users/<user_id>/deleted           the tombstone a user's deletion leaves
    user-data bucket  <user_id>/...                     the user's data, written by the app backend (data_ref)

The base model's objects are watermark.base's; the ledger's records are infra.ledger's.
"""
from __future__ import annotations


def generated_model(model_id: str) -> str:
    return f"generated/{model_id}.zip"


def watermarked_model(model_id: str) -> str:
    return f"watermarked/{model_id}.tflite"


def delivered_model(model_id: str) -> str:
    return f"{model_id}.iml"


def stage_and_model(name: str) -> tuple[str, str]:
    """The stage folder ("" in the delivery bucket) and the model id of a staging or delivery object."""
    stage, _, filename = name.rpartition("/")
    return stage, filename.split(".", 1)[0]


def step_done(step: str, model_id: str) -> str:
    return f"done/{step}/{model_id}"


def step_outbox(step: str, model_id: str) -> str:
    return f"outbox/{step}/{model_id}"


def step_claims(step: str, model_id: str) -> str:
    """The prefix under which the claims on a model at a step are numbered."""
    return f"claims/{step}/{model_id}/"


def step_claim(step: str, model_id: str, epoch: int) -> str:
    return f"{step_claims(step, model_id)}{epoch:09d}"


def claim_released(claim: str) -> str:
    """The marker that a claim was given back."""
    return f"{claim}.released"


def user_slots(user_id: str, period: int) -> str:
    """The prefix of a user's request-limit slots in one period (periods are numbered from the Unix epoch)."""
    return f"slots/{user_id}/{period}/"


def user_slot(user_id: str, period: int, slot: int) -> str:
    return f"{user_slots(user_id, period)}{slot:06d}"


def user_models(user_id: str) -> str:
    """The prefix under which a user's admitted models are marked."""
    return f"users/{user_id}/models/"


def user_model(user_id: str, model_id: str) -> str:
    return user_models(user_id) + model_id


def user_deleted(user_id: str) -> str:
    return f"users/{user_id}/deleted"


def user_data_folder(user_id: str) -> str:
    """Where the app backend keeps a user's data; a signup's data_ref names an object under it."""
    return f"{user_id}/"
