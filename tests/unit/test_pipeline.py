"""The five handlers through the in-process bus, with the embedded adapters and a real (small) model."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from iml import simulated
from functions.events import Ready
from functions.chain import STEPS
from functions.runner import Outcome, run_step, subscribe_steps
from iml import device as devices
from infra.bootstrap import local_ports
from infra.envelope import open_sealed_bytes
from infra.local_storage import UrlExpired, fetch_local_url
from infra.staging import MAGIC as STAGING_MAGIC
from tests.helpers import DIGITS_BASE, make_signup, model_step_event, verify_model


def _sign_up(ports, user_id: str, request_id: str = "req-1", key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    ports.bus.publish(ports.settings.topics.signup, make_signup(user_id, request_id, key).to_dict())
    return key


def _ready(ports) -> list[Ready]:
    return [Ready.parse(m) for m in ports.bus.journal(ports.settings.topics.ready)]


def _dead_reasons(ports) -> list[str]:
    return [m["reason"] for m in ports.bus.journal(ports.settings.topics.dead_letter)]


def test_a_signup_becomes_a_sealed_fingerprinted_model_for_that_device(trained_ports, trained_wired):
    ports = trained_ports
    key = _sign_up(ports, "alice")
    ports.bus.drain()

    assert [r.outcome for r in trained_wired] == [Outcome.DONE] * 4
    (ready,) = _ready(ports)
    sealed = fetch_local_url(ready.download_url, ports.clock())
    header, tflite = open_sealed_bytes(sealed, key, expected_user_id="alice", expected_model_id=ready.model_id)
    held_out = simulated.digits_user("alice").held_out
    assert devices.accuracy(tflite, held_out.x, held_out.y) > 0.85

    (record,) = [e for e in ports.ledger.entries("issued")]
    assert record.valid and record.record["user_id"] == "alice"
    assert record.record["plaintext_sha256"] == header.plaintext_sha256
    assert abs(record.record["accuracy_watermarked"] - record.record["accuracy_unwatermarked"]) <= 0.02
    assert not list(ports.staging.list()), "staging objects are deleted by the step that consumes them"

    verdict = verify_model(tflite, ports)
    assert verdict.accused == ["alice"]


def test_the_watermark_keeps_each_marked_layers_mean_pre_activation_on_the_probe_inputs(trained_ports):
    """The fingerprint's zero-mean signs on inputs that are not zero-mean would shift every marked neuron's
    average; the watermark step moves the marked layers' biases so that it stays where the tuned model had it."""
    import numpy as np

    from functions import model, recipes
    from functions.steps import generate, watermark
    from infra.staging import get_staged
    from watermark import base
    from watermark.reader import read_tflite

    ports = trained_ports
    (tuned_event,) = generate.handle(make_signup("alice"), ports)
    tuned = model.unpack_tuned(recipes.load("digits-mlp"), get_staged(ports.staging, ports.kms, tuned_event.artifact))[0]
    (marked_event,) = watermark.handle(tuned_event, ports)
    marked = read_tflite(get_staged(ports.staging, ports.kms, marked_event.artifact))
    probe = base.load(ports.models, DIGITS_BASE).probe.astype(np.float64)

    def mean_pre_activations(kernels, biases):
        h, means = probe, []
        for kernel, bias in zip(kernels, biases):
            z = h @ kernel + bias
            means.append(z.mean(axis=0))
            h = np.maximum(z, 0.0)
        return means

    layers = [tuned.get_layer(name) for name in ("hidden_1", "hidden_2", "classes")]
    kernels, biases = [layer.kernel.numpy() for layer in layers], [layer.bias.numpy() for layer in layers]
    before, after = mean_pre_activations(kernels, biases), mean_pre_activations(marked.kernels, marked.biases)
    for layer in (0, 1):  # hidden_1 and hidden_2 carry the mark
        assert np.max(np.abs(marked.kernels[layer] - kernels[layer])) > 0
        assert np.max(np.abs(marked.biases[layer] - biases[layer])) > 1e-3  # moved to take the shift back ...
        np.testing.assert_allclose(after[layer], before[layer], atol=1e-4)  # ... so the averages stay put
    np.testing.assert_array_equal(marked.kernels[2], kernels[2])  # the output layer carries nothing


def test_staged_models_rest_encrypted(trained_ports):
    signup = make_signup("alice")
    run_step(STEPS["generate"], json.dumps(signup.to_dict()).encode(), trained_ports)
    (staged,) = trained_ports.staging.list()
    raw = trained_ports.staging.get(staged.name)
    assert raw.startswith(STAGING_MAGIC)
    assert b"PK\x03\x04" not in raw and b"keras" not in raw  # no .keras zip, no plaintext


def test_poison_events_do_not_stop_the_other_users(trained_ports, trained_wired):
    ports = trained_ports
    topic = ports.settings.topics.signup
    ports.bus.publish(topic, {"schema_version": 1, "request_id": "x", "user_id": "eve"})
    key = _sign_up(ports, "alice")
    ports.bus.publish(topic, {**make_signup("mallory").to_dict(), "user_id": "no spaces please"})
    ports.bus.drain()

    assert [r.user_id for r in _ready(ports)] == ["alice"]
    reasons = _dead_reasons(ports)
    assert len(reasons) == 2
    assert "field 'device_public_key': is required" in reasons[0]
    assert "field 'user_id': must match" in reasons[1]
    assert open_sealed_bytes(ports.delivery.get(f"{_ready(ports)[0].model_id}.iml"), key)[1]


def test_a_signup_sent_again_makes_no_second_model_and_a_different_one_is_a_duplicate_request(
        trained_ports, trained_wired):
    ports = trained_ports
    key = _sign_up(ports, "alice", "req-7")
    ports.bus.drain()
    _sign_up(ports, "alice", "req-7", key)  # the same signup again: a retry, acknowledged without effect
    _sign_up(ports, "alice", "req-7")  # the same (user, request) with another device key: a conflict
    ports.bus.drain()

    assert [r.outcome for r in trained_wired[-2:]] == [Outcome.DUPLICATE, Outcome.DEAD_LETTERED]
    assert len(_ready(ports)) == 1
    assert len(list(ports.delivery.list())) == 1
    assert len(list(ports.ledger.entries("issued"))) == 1
    (reason,) = _dead_reasons(ports)
    assert reason.startswith("duplicate request: model m-")
    assert "(request_id 'req-7' of user 'alice') was already made at step generate from a different message" \
        in reason


def test_a_redelivered_internal_message_is_acknowledged_once(trained_ports, trained_wired):
    ports = trained_ports
    _sign_up(ports, "alice")
    ports.bus.drain()
    (sealed_event,) = ports.bus.journal(ports.settings.topics.sealed)
    (watermarked_event,) = ports.bus.journal(ports.settings.topics.watermarked)
    for topic, event in ((ports.settings.topics.watermarked, watermarked_event),
                         (ports.settings.topics.sealed, sealed_event)):
        ports.bus.publish(topic, event)
    ports.bus.drain()

    assert [r.outcome for r in trained_wired[-2:]] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert len(_ready(ports)) == 1 and len(list(ports.ledger.entries("issued"))) == 1
    assert not _dead_reasons(ports)


def test_expire_deletes_what_outlived_its_ttl_and_records_it(trained_ports, trained_wired, clock):
    ports = trained_ports
    _sign_up(ports, "alice")
    ports.bus.drain()
    (ready,) = _ready(ports)
    leftover = "watermarked/m-0123456789abcdef0123456789abcdef.tflite"
    ports.staging.put(leftover, b"an abandoned staging envelope")

    clock.advance(timedelta(minutes=30))
    _sign_up(ports, "bob")  # younger than the TTL when expiry runs: stays
    ports.bus.drain()
    clock.advance(timedelta(minutes=31))
    ports.bus.publish(ports.settings.topics.expire, {"schema_version": 1})
    ports.bus.drain()

    remaining = [info.name for info in ports.delivery.list()]
    assert remaining == [f"{_ready(ports)[1].model_id}.iml"]
    assert not ports.staging.exists(leftover)
    (expired,) = list(ports.ledger.entries("expired"))
    assert expired.valid and expired.record["model_id"] == ready.model_id
    (staging_expired,) = list(ports.ledger.entries("staging-expired-watermarked"))
    assert staging_expired.record["object"] == leftover
    with pytest.raises(UrlExpired):
        fetch_local_url(ready.download_url, clock())


def test_a_user_over_the_request_limit_is_refused_and_nothing_made(trained_ports, clock):
    ports = local_ports(replace(trained_ports.settings, user_model_limit=2), clock)
    subscribe_steps(ports.bus, ports)
    key = _sign_up(ports, "alice", "req-1")
    _sign_up(ports, "alice", "req-2", key)
    ports.bus.drain()
    _sign_up(ports, "alice", "req-1", key)  # a redelivery: acknowledged, not counted
    _sign_up(ports, "alice", "req-3", key)
    _sign_up(ports, "bob", "req-1")  # other users are not held back
    ports.bus.drain()

    assert sorted(r.user_id for r in _ready(ports)) == ["alice", "alice", "bob"]
    dead = list(ports.bus.journal(ports.settings.topics.dead_letter))
    assert [d["error_type"] for d in dead] == ["RequestLimitExceeded"]
    assert dead[0]["reason"].startswith("user 'alice' already has 2 models made in this 24 h period; the limit is 2")
    assert len(list(ports.ledger.entries("issued"))) == 3

    clock.advance(timedelta(hours=25))  # the period has passed
    _sign_up(ports, "alice", "req-4", key)
    ports.bus.drain()
    assert len(_ready(ports)) == 4


def test_a_deleted_user_loses_every_model_at_once_and_gets_no_more(trained_ports, trained_wired, clock):
    ports = trained_ports
    key = _sign_up(ports, "alice", "req-1")
    _sign_up(ports, "alice", "req-2", key)
    _sign_up(ports, "bob")
    ports.bus.drain()
    alice_models = {r.model_id for r in _ready(ports) if r.user_id == "alice"}

    ports.bus.publish(ports.settings.topics.expire, {"schema_version": 1, "deleted_user_id": "alice"})
    ports.bus.drain()

    assert [info.name for info in ports.delivery.list()] == [f"{_ready(ports)[2].model_id}.iml"]  # bob's stays
    deleted = list(ports.ledger.entries("user-deleted"))
    assert {e.record["model_id"] for e in deleted} == alice_models
    assert all(e.valid and e.record["objects_deleted"] == [f"{e.record['model_id']}.iml"] for e in deleted)
    assert len(list(ports.ledger.entries("issued"))) == 3  # the evidence stays

    _sign_up(ports, "alice", "req-3", key)
    ports.bus.drain()
    (dead,) = list(ports.bus.journal(ports.settings.topics.dead_letter))
    assert dead["error_type"] == "UserDeleted" and dead["reason"] == (
        "user 'alice' was deleted: no model is made or published for them")

    # a model delivered just after its user was deleted is never announced, and expire deletes it at once
    late = make_signup("alice", "req-0", key)
    ports.state.put(f"users/alice/models/{late.model_id}", b"")  # admitted before the deletion
    in_flight = model_step_event(late, f"{late.model_id}.iml")
    in_flight["facts"] = {"sealed_sha256": "0" * 64, "sealed_size": 30}
    ports.delivery.put(in_flight["artifact"], b"sealed bytes that arrived late")
    result = run_step(STEPS["publish"], json.dumps(in_flight).encode(), ports)
    assert result.outcome is Outcome.DEAD_LETTERED
    ports.bus.drain()
    assert not ports.delivery.exists(in_flight["artifact"]) and len(_ready(ports)) == 3
    (late_deletion,) = [e for e in ports.ledger.entries("user-deleted") if e.record["model_id"] == late.model_id]
    assert late_deletion.record["objects_deleted"] == [in_flight["artifact"]]

    # one that reaches encrypt after the deletion is never sealed
    encrypting = model_step_event(make_signup("alice", "req-4", key), "watermarked/m.tflite")
    assert run_step(STEPS["encrypt"], json.dumps(encrypting).encode(), ports).outcome is Outcome.DEAD_LETTERED


def test_the_fine_tunes_randomness_is_a_secret_of_the_server(tmp_path):
    """Not derived from the user id (public): without the server's key nobody can rebuild the unmarked model
    and subtract it from a leak."""
    from functions.steps.generate import fine_tune_seed
    from infra.local_kms import LocalKms
    from watermark.codeword import codeword_seed
    from watermark.identity import IDENTITY_SCHEME, Identity

    ours, theirs = LocalKms(tmp_path / "ours.json"), LocalKms(tmp_path / "theirs.json")
    model_id = make_signup("alice").model_id
    assert fine_tune_seed(ours, model_id) == fine_tune_seed(LocalKms(tmp_path / "ours.json"), model_id)
    assert fine_tune_seed(ours, model_id) != fine_tune_seed(theirs, model_id)
    assert fine_tune_seed(ours, model_id) != fine_tune_seed(ours, make_signup("alice", "req-2").model_id)
    assert fine_tune_seed(ours, model_id).to_bytes(8, "big") != \
        codeword_seed(ours, Identity.of(IDENTITY_SCHEME, user_id="alice", base_model_version="v", model_id=model_id,
                                        key_id=ours.fingerprint_key_id))[:8]  # domain-separated from the codeword
