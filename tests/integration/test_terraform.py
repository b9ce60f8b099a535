"""terraform/ holds every promise of DESIGN.md §5 in HCL, resource by resource, and stays in step with the code.

The Google provider cannot be downloaded here, so `terraform validate` cannot run: these tests parse the HCL
(python-hcl2), and `terraform fmt` and checkov check the rest.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from functions import names
from functions.chain import STEPS
from functions.events import ExpireTick
from iml.package import ARCHIVES
from infra.settings import Settings, Topics
from tests.helpers import ROOT

# Read where the embedded adapters or the emulators run, never given to a deployed function
LOCAL_ONLY = ("IML_WORKDIR", "IML_URL_SIGNING_KEY_FILE", "IML_KMS_ENDPOINT")
PER_STEP = ("IML_CLAIM_LEASE_SECONDS", "IML_CLAIM_WAIT_SECONDS")  # set per function, from its timeout
TERRAFORM = ROOT / "terraform"
IN_CI = os.environ.get("CI") == "true"


def unquote(value):
    """python-hcl2 keeps string literals quoted and expressions as "${...}", and adds __is_block__ and
    __comments__ keys: strip the quotes and those keys, keep the rest."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


def load(folder: Path) -> dict:
    """Every block of the module's .tf files: resources by (type, name), data, variables, outputs, locals."""
    module = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}, "terraform": []}
    for path in sorted(folder.glob("*.tf")):
        with path.open() as handle:
            parsed = unquote(hcl2.load(handle))
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module["resource"][(kind, name)] = body
        for block in parsed.get("data", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module["data"][(kind, name)] = body
        for key in ("variable", "output"):
            for block in parsed.get(key, []):
                module[key].update(block)
        for block in parsed.get("locals", []):
            module["locals"].update(block)
        module["terraform"] += parsed.get("terraform", [])
    return module


@pytest.fixture(scope="module")
def tf() -> dict:
    return load(TERRAFORM)


def resources(tf: dict, kind: str) -> dict:
    return {name: body for (k, name), body in tf["resource"].items() if k == kind}


def block(body: dict, name: str) -> dict:
    (only,) = body[name]
    return only


def tool(name: str, *candidates: Path) -> str:
    """A command-line tool for a check: on PATH or in a project folder; missing under CI is a failure."""
    found = shutil.which(name) or next((str(c) for c in candidates if c.exists()), None)
    if found:
        return found
    message = f"{name} is not installed; see terraform/README.md, 'Checking the module'"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


# --- formatting and policy ---------------------------------------------------------------------------------

def test_terraform_fmt_finds_nothing_to_change():
    terraform = tool("terraform")
    done = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}{done.stderr}"


def test_checkov_passes_with_every_skip_explained():
    checkov = tool("checkov", ROOT / ".venv-checkov" / "bin" / "checkov")
    done = subprocess.run([checkov, "--directory", str(TERRAFORM), "--framework", "terraform", "--output", "json",
                           "--compact", "--skip-download"], capture_output=True, text=True)
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], f"checkov failed checks: {failed}"
    passed = sum(len(r["results"]["passed_checks"]) for r in reports)
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert passed > 50, "checkov checked almost nothing: did it parse the module?"
    for check in skipped:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) >= 30, f"{check['check_id']} on {check['resource']} is skipped without a reason"


# --- buckets -----------------------------------------------------------------------------------------------

def test_every_bucket_is_uniform_private_and_customer_key_encrypted(tf):
    buckets = resources(tf, "google_storage_bucket")
    assert set(buckets) == {"pipeline", "evidence", "sources"}
    for name, bucket in buckets.items():
        assert bucket["uniform_bucket_level_access"] is True, name
        assert bucket["public_access_prevention"] == "enforced", name
        assert bucket["force_destroy"] is False, name
        assert block(bucket, "encryption")["default_kms_key_name"] == '${local.crypto_key_ids["cmek"]}', name


def test_staging_and_delivery_keep_no_backup_and_expire_by_lifecycle_as_a_backstop(tf):
    pipeline = resources(tf, "google_storage_bucket")["pipeline"]
    roles = tf["locals"]["pipeline_buckets"]
    assert {"staging", "delivery", "models", "state", "user-data"} == set(roles)
    assert pipeline["for_each"] == "${local.pipeline_buckets}"
    assert block(pipeline, "versioning")["enabled"] is False
    assert block(pipeline, "soft_delete_policy")["retention_duration_seconds"] == 0
    rules = block(pipeline, "dynamic")["lifecycle_rule"]
    assert rules["for_each"] == "${each.value.delete_after}"
    rule = rules["content"][0]
    assert block(rule, "action")["type"] == "Delete"
    assert block(rule, "condition") == {"age": "${lifecycle_rule.value.days}",
                                        "matches_prefix": "${lifecycle_rule.value.prefixes}"}
    for role in ("staging", "delivery"):
        # a day: longer than any TTL the variables allow
        assert roles[role]["delete_after"] == [{"days": 1, "prefixes": None}]
    assert roles["models"]["delete_after"] == []
    assert roles["user-data"]["delete_after"] == [{"days": "${var.user_data_retention_days}", "prefixes": None}]


def test_the_runners_records_outlive_every_redelivery_and_slots_their_period(tf):
    """Every state object the runner and the request limit write is deleted by a lifecycle rule, never before
    it can matter: claims, outboxes and step markers after the messages they guard, slots after their period."""
    claims, slots = tf["locals"]["pipeline_buckets"]["state"]["delete_after"]
    assert claims == {"days": "${ceil(var.message_retention_hours / 24) + 1}",
                      "prefixes": ["claims/", "outbox/", "done/"]}
    assert slots == {"days": "${ceil(var.user_limit_period_hours / 24) + 1}", "prefixes": ["slots/"]}
    ruled = claims["prefixes"] + slots["prefixes"]
    for name in (names.step_claim("encrypt", "m-1", 0), names.step_outbox("encrypt", "m-1"),
                 names.step_done("encrypt", "m-1"), names.user_slot("alice", 20000, 0)):
        assert any(name.startswith(prefix) for prefix in ruled), name


def test_redeliveries_outlast_a_crashed_claim_for_every_function(tf):
    """A message whose delivery crashed is redelivered until its claim lapses, not dead-lettered before: with
    every backoff at its minimum, the attempts after the first span more than the lease (docs/delivery.md)."""
    precondition = block(block(resources(tf, "google_pubsub_subscription")["push"], "lifecycle"), "precondition")
    assert precondition["condition"] == (
        "${(var.max_delivery_attempts - 1) * (local.retry_minimum_backoff_seconds + "
        "local.claim_wait_seconds[each.key]) > local.claim_lease_seconds[each.key]}")
    locals_ = tf["locals"]
    assert locals_["claim_lease_seconds"] == "${{for step, f in var.functions : step => f.timeout_seconds + 30}}"
    assert locals_["claim_wait_seconds"] == \
        "${{for step, f in var.functions : step => min(30, floor(f.timeout_seconds / 2))}}"
    attempts, backoff = tf["variable"]["max_delivery_attempts"]["default"], locals_["retry_minimum_backoff_seconds"]
    for step, function in tf["variable"]["functions"]["default"].items():
        lease, wait = function["timeout_seconds"] + 30, min(30, function["timeout_seconds"] // 2)
        assert (attempts - 1) * (backoff + wait) > lease, step


def test_evidence_is_retained_and_its_lock_is_a_variable(tf):
    evidence = resources(tf, "google_storage_bucket")["evidence"]
    policy = block(evidence, "retention_policy")
    assert policy == {"retention_period": "${var.evidence_retention_days * 86400}",
                      "is_locked": "${var.lock_evidence_retention}"}
    assert tf["variable"]["lock_evidence_retention"]["default"] is False  # locking is irreversible: opt in


def test_the_storage_service_agent_may_use_the_bucket_key(tf):
    grant = resources(tf, "google_kms_crypto_key_iam_member")["cmek_users"]
    assert grant["role"] == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    assert "local.gcs_service_agent" in grant["for_each"] and "local.pubsub_service_agent" in grant["for_each"]
    assert tf["locals"]["gcs_service_agent"] == \
        "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"


# --- keys --------------------------------------------------------------------------------------------------

def test_keys_have_the_purposes_the_code_calls_them_for(tf):
    keys = tf["locals"]["crypto_keys"]
    assert {name: (k["purpose"], k["algorithm"]) for name, k in keys.items()} == {
        "cmek": ("ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION"),
        "envelope": ("ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION"),
        "fingerprint": ("MAC", "HMAC_SHA256"),
        "ledger": ("ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256"),
    }
    for name, key in keys.items():
        expected = "${local.rotation_period}" if key["purpose"] == "ENCRYPT_DECRYPT" else None
        assert key["rotation_period"] == expected, name


def test_symmetric_keys_rotate_within_90_days(tf):
    assert tf["locals"]["rotation_period"] == "${var.key_rotation_days * 86400}s"
    rotation = tf["variable"]["key_rotation_days"]
    assert rotation["default"] <= 90
    assert "var.key_rotation_days <= 90" in rotation["validation"][0]["condition"]


def test_keys_are_protected_from_destroy_as_terraform_google_kms_does(tf):
    keys = resources(tf, "google_kms_crypto_key")
    protected, ephemeral = keys["protected"], keys["ephemeral"]
    assert block(protected, "lifecycle")["prevent_destroy"] is True
    assert protected["for_each"] == "${var.prevent_destroy ? local.crypto_keys : {}}"
    assert ephemeral["for_each"] == "${var.prevent_destroy ? {} : local.crypto_keys}"
    assert {k: v for k, v in protected.items() if k not in ("lifecycle", "for_each")} == \
        {k: v for k, v in ephemeral.items() if k not in ("lifecycle", "for_each")}, "the two copies drifted"
    assert tf["variable"]["prevent_destroy"]["default"] is True


# --- Pub/Sub -----------------------------------------------------------------------------------------------

def test_topics_are_the_ones_the_code_names_and_are_customer_key_encrypted(tf):
    prefix = "PREFIX-"
    names = {prefix + topic for topic in tf["locals"]["topics"]}
    assert names == set(vars(Topics.with_prefix(prefix)).values())
    topic = resources(tf, "google_pubsub_topic")["iml"]
    assert topic["name"] == "${var.name_prefix}${each.key}"
    assert topic["kms_key_name"] == '${local.crypto_key_ids["cmek"]}'
    assert topic["message_retention_duration"] == "${local.message_retention}"
    assert tf["variable"]["message_retention_hours"]["default"] <= 24


def test_each_step_is_wired_and_deployed_as_the_chain_table_says(tf):
    """functions/chain.py is the one table of the chain; terraform/main.tf's steps must say the same."""
    topics = Topics.with_prefix("")
    steps = tf["locals"]["steps"]
    assert set(steps) == set(STEPS)
    for name, step in STEPS.items():
        assert steps[name]["input"] == step.input_topic(topics), name
        assert steps[name]["outputs"] == step.output_topics(topics), name
        assert steps[name]["archive"] == step.archive, name
        assert steps[name]["concurrency"] == step.concurrency, name
    assert {step.delivery_attempts for step in STEPS.values()} == {tf["variable"]["max_delivery_attempts"]["default"]}
    assert set(tf["variable"]["functions"]["default"]) == set(STEPS)  # sized per step, every step
    service = block(resources(tf, "google_cloudfunctions2_function")["step"], "service_config")
    assert service["max_instance_request_concurrency"] == "${each.value.concurrency}"


def test_every_function_is_fed_by_a_push_subscription_with_retry_and_dead_letters(tf):
    push = resources(tf, "google_pubsub_subscription")["push"]
    assert push["for_each"] == "${local.steps}"
    assert push["topic"] == "${google_pubsub_topic.iml[each.value.input].id}"
    config = block(push, "push_config")
    uri = "${google_cloudfunctions2_function.step[each.key].service_config[0].uri}"
    assert config["push_endpoint"] == uri
    assert block(config, "oidc_token") == {"service_account_email": "${google_service_account.push.email}",
                                           "audience": uri}
    retry = block(push, "retry_policy")
    assert retry["minimum_backoff"] == "${local.retry_minimum_backoff_seconds}s"
    assert retry["maximum_backoff"] == "600s"
    dead = block(push, "dead_letter_policy")
    assert dead["dead_letter_topic"] == '${google_pubsub_topic.iml["dead-letter"].id}'
    assert dead["max_delivery_attempts"] == "${var.max_delivery_attempts}"


def test_pubsub_may_forward_dead_letters_and_nothing_forwarded_is_lost(tf):
    agent = "${local.pubsub_service_agent}"
    publisher = resources(tf, "google_pubsub_topic_iam_member")["dead_letter_forwarding"]
    assert (publisher["topic"], publisher["role"], publisher["member"]) == (
        '${google_pubsub_topic.iml["dead-letter"].name}', "roles/pubsub.publisher", agent)
    subscriber = resources(tf, "google_pubsub_subscription_iam_member")["dead_letter_forwarding"]
    assert (subscriber["for_each"], subscriber["role"], subscriber["member"]) == (
        "${local.steps}", "roles/pubsub.subscriber", agent)
    review = resources(tf, "google_pubsub_subscription")["dead_letter_review"]
    assert review["topic"] == '${google_pubsub_topic.iml["dead-letter"].id}'
    assert review["message_retention_duration"] == "604800s"
    assert "push_config" not in review  # pulled by people, acknowledged once read


# --- functions ---------------------------------------------------------------------------------------------

def test_five_functions_from_the_two_archives_internal_only_each_its_own_account(tf):
    function = resources(tf, "google_cloudfunctions2_function")["step"]
    assert function["for_each"] == "${local.steps}"
    build = block(function, "build_config")
    assert build["entry_point"] == "${each.key}" and build["runtime"] == "python311"
    assert block(block(build, "source"), "storage_source")["object"] == \
        "${google_storage_bucket_object.archive[each.value.archive].name}"
    packaged = {step: archive.name for archive in ARCHIVES for step in archive.entry_points}
    assert {step: wiring["archive"] for step, wiring in tf["locals"]["steps"].items()} == packaged
    service = block(function, "service_config")
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert service["service_account_email"] == "${google_service_account.step[each.key].email}"
    assert service["environment_variables"] == (
        "${merge(local.function_environment, {IML_CLAIM_LEASE_SECONDS = tostring(local.claim_lease_seconds[each.key]), "
        "IML_CLAIM_WAIT_SECONDS = tostring(local.claim_wait_seconds[each.key])})}")
    for setting in ("memory", "cpu", "timeout_seconds", "max_instances"):
        assert f"var.functions[each.key].{setting}" in json.dumps(service)
    accounts = resources(tf, "google_service_account")
    assert accounts["step"]["for_each"] == "${local.steps}"
    assert accounts["step"]["account_id"] == "${var.name_prefix}${each.key}"


def test_function_environment_is_exactly_what_the_deployed_code_reads(tf):
    read = set()
    for package in ("infra", "functions", "watermark"):
        for source in (ROOT / package).rglob("*.py"):
            read |= set(re.findall(r"\"(IML_[A-Z_]+)\"", source.read_text()))
    environment = {*tf["locals"]["function_environment"], *PER_STEP}
    assert set(environment) - read == set(), "Terraform sets variables the code never reads"
    assert read - set(LOCAL_ONLY) - set(environment) == set(), "the code reads variables Terraform never sets"
    assert tf["locals"]["function_environment"]["IML_BACKEND"] == "gcp"
    assert tf["locals"]["function_environment"]["IML_KMS"] == "cloud"
    assert "IML_URL_SIGNING_KEY_FILE" not in environment  # URLs are signed through IAM signBlob, never a key file


def test_variable_defaults_match_the_code_defaults(tf):
    defaults = Settings()
    variables = {name: body["default"] for name, body in tf["variable"].items() if "default" in body}
    assert variables["url_ttl_minutes"] * 60 == defaults.url_ttl.total_seconds()
    assert variables["model_max_age_minutes"] * 60 == defaults.model_max_age.total_seconds()
    assert variables["staging_max_age_minutes"] * 60 == defaults.staging_max_age.total_seconds()
    assert variables["user_model_limit"] == defaults.user_model_limit
    assert variables["user_limit_period_hours"] * 3600 == defaults.user_limit_period.total_seconds()
    assert variables["watermark_strength"] == defaults.watermark_strength
    assert variables["name_prefix"] == defaults.topic_prefix
    assert variables["recipe"] == defaults.recipe


def test_only_the_push_identity_invokes_the_functions(tf):
    invoker = resources(tf, "google_cloud_run_service_iam_member")["push_invokes"]
    assert (invoker["role"], invoker["member"]) == ("roles/run.invoker", "${google_service_account.push.member}")
    assert invoker["service"] == "${google_cloudfunctions2_function.step[each.key].name}"


# --- least privilege ---------------------------------------------------------------------------------------

DELETES = {"roles/storage.objectUser", "roles/storage.objectAdmin", "roles/storage.admin"}
WRITES = DELETES | {"roles/storage.objectCreator"}


def test_nobody_but_expire_deletes_delivered_objects_and_only_encrypt_delivers(tf):
    roles = tf["locals"]["bucket_roles"]
    assert set(roles) == set(STEPS)
    deleters = {step for step, buckets in roles.items() if DELETES & set(buckets.get("delivery", []))}
    writers = {step for step, buckets in roles.items() if WRITES & set(buckets.get("delivery", []))}
    assert deleters == {"expire"}
    assert writers == {"encrypt", "expire"}
    evidence_writers = {step for step, buckets in roles.items() if WRITES & set(buckets.get("evidence", []))}
    assert evidence_writers == {"encrypt", "expire"}  # the steps that append to the ledger
    assert not any(DELETES & set(buckets.get("evidence", [])) for buckets in roles.values())


def test_only_generate_reads_users_data_which_the_app_backend_writes_and_cannot_read_back(tf):
    roles = tf["locals"]["bucket_roles"]
    readers = {step for step, buckets in roles.items() if buckets.get("user-data")}
    assert readers == {"generate", "expire"}
    assert roles["generate"]["user-data"] == ["roles/storage.objectViewer"]
    assert roles["expire"]["user-data"] == ["${local.object_deleter_role}"]  # a user's deletion
    deleter = resources(tf, "google_project_iam_custom_role")["object_deleter"]
    assert sorted(deleter["permissions"]) == ["storage.objects.delete", "storage.objects.list"]  # no get: no read
    app = resources(tf, "google_storage_bucket_iam_member")["app_writes_user_data"]
    assert (app["bucket"], app["role"]) == ('${local.bucket_names["user-data"]}', "roles/storage.objectCreator")


def test_the_confidential_base_models_are_read_by_generate_watermark_the_verifier_and_publishers_only(tf):
    roles = tf["locals"]["bucket_roles"]
    assert {step for step, buckets in roles.items() if buckets.get("models")} == {"generate", "watermark"}
    assert not any(WRITES & set(buckets.get("models", [])) for buckets in roles.values())  # never trained here
    members = resources(tf, "google_storage_bucket_iam_member")
    assert "models" in members["verifier_reads"]["for_each"] and "evidence" in members["verifier_reads"]["for_each"]
    assert "var.base_publisher_members" in members["base_publishers"]["for_each"]
    assert members["base_publishers"]["bucket"] == '${local.bucket_names["models"]}'
    granted = {body.get("bucket") for body in members.values()}
    assert granted == {'${local.bucket_names[each.value.target]}', '${local.bucket_names[each.value.bucket]}',
                       '${local.bucket_names["user-data"]}', '${local.bucket_names["models"]}',
                       "${google_storage_bucket.sources.name}"}


def test_only_generate_and_watermark_may_use_the_fingerprint_secret(tf):
    keys = tf["locals"]["key_roles"]
    assert set(keys) == set(STEPS)
    users = {step for step, granted in keys.items() if granted.get("fingerprint")}
    assert users == {"generate", "watermark"}  # the fine-tune's secret seed, the codeword
    signers = {step for step, granted in keys.items() if granted.get("ledger")}
    assert signers == {"encrypt", "expire"}


def test_publish_signs_urls_as_itself_and_no_function_has_a_project_wide_data_role(tf):
    sign = resources(tf, "google_service_account_iam_member")["publish_signs_as_itself"]
    assert sign["role"] == "roles/iam.serviceAccountTokenCreator"
    assert sign["service_account_id"] == '${google_service_account.step["publish"].name}'
    assert sign["member"] == '${google_service_account.step["publish"].member}'
    project_roles = set()
    for grant in resources(tf, "google_project_iam_member").values():
        project_roles |= set(re.findall(r"roles/[A-Za-z.]+", json.dumps(grant)))
    assert project_roles == {"roles/logging.logWriter", "roles/artifactregistry.writer"}
    step_grants = [resources(tf, kind)["step"] for kind in ("google_storage_bucket_iam_member",
                                                           "google_kms_crypto_key_iam_member",
                                                           "google_pubsub_topic_iam_member")]
    assert all(g["member"] == "${google_service_account.step[each.value.step].member}" for g in step_grants)


def test_steps_publish_to_their_outputs_and_the_dead_letters_and_nothing_else(tf):
    expression = tf["locals"]["topic_publishers"]
    assert expression == '${{for step, wiring in local.steps : step => concat(wiring.outputs, ["dead-letter"])}}'


# --- schedule and observability ----------------------------------------------------------------------------

def test_an_hourly_job_sends_expire_a_valid_tick(tf):
    job = resources(tf, "google_cloud_scheduler_job")["hourly_expiry"]
    assert job["schedule"] == "0 * * * *" and job["time_zone"] == "Etc/UTC"
    target = block(job, "pubsub_target")
    assert target["topic_name"] == '${google_pubsub_topic.iml["expire"].id}'
    literal = re.fullmatch(r"\$\{base64encode\(jsonencode\(\{(.*)\}\)\)\}", target["data"].replace("\n", " "))
    assert literal, "the message is a JSON object literal"
    fields = dict(re.findall(r"(\w+)\s*=\s*(\"[^\"]*\"|\d+)", literal.group(1)))
    tick = ExpireTick.parse({key: json.loads(value) for key, value in fields.items()})
    assert tick.reason and tick.deleted_user_id is None


def test_storage_data_access_is_audited_and_denied_delivery_reads_alert(tf):
    audit = resources(tf, "google_project_iam_audit_config")["storage"]
    assert audit["service"] == "storage.googleapis.com"
    assert {c["log_type"] for c in audit["audit_log_config"]} >= {"DATA_READ", "DATA_WRITE"}
    metric = resources(tf, "google_logging_metric")["delivery_denied_reads"]
    assert 'google_storage_bucket.pipeline["delivery"].name' in metric["filter"]
    assert "status.code=7" in metric["filter"] and "status.code=5" in metric["filter"]
    alert = resources(tf, "google_monitoring_alert_policy")["delivery_denied_reads"]
    assert alert["notification_channels"] == "${var.alert_notification_channels}"
    assert "google_logging_metric.delivery_denied_reads.name" in json.dumps(alert["conditions"])


# --- module conventions ------------------------------------------------------------------------------------

def test_every_variable_is_described_and_typed(tf):
    for name, variable in tf["variable"].items():
        assert len(variable.get("description", "")) > 20, f"variable {name} has no description"
        assert "type" in variable, f"variable {name} has no type"
    for name in ("url_ttl_minutes", "model_max_age_minutes", "user_model_limit", "evidence_retention_days",
                 "region", "scheduler_region", "name_prefix", "labels"):
        assert name in tf["variable"], f"the issue asks for a variable {name}"
        assert tf["variable"][name].get("validation"), f"variable {name} is not validated"


def test_versions_pin_terraform_and_the_google_provider(tf):
    (settings,) = tf["terraform"]
    assert settings["required_version"].startswith(">= 1.")
    (providers,) = settings["required_providers"]
    assert providers["google"]["source"] == "hashicorp/google"
    assert re.fullmatch(r">= \d+\.\d+, < \d+\.\d+", providers["google"]["version"])


def test_readme_tables_list_every_input_and_output(tf):
    readme = (TERRAFORM / "README.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", readme, flags=re.MULTILINE))
    assert set(tf["variable"]) - rows == set(), "inputs missing from terraform/README.md"
    assert set(tf["output"]) - rows == set(), "outputs missing from terraform/README.md"
    assert rows - set(tf["variable"]) - set(tf["output"]) == set(), "README lists inputs or outputs that are gone"


def test_the_basic_example_uses_the_module_and_sets_its_required_inputs(tf):
    text = (TERRAFORM / "examples" / "basic" / "main.tf").read_text()
    assert 'source = "../.."' in text
    required = {name for name, variable in tf["variable"].items() if "default" not in variable}
    for name in required:
        assert re.search(rf"^\s*{name}\s*=", text, flags=re.MULTILINE), f"the example does not set {name}"
