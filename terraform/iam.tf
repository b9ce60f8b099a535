# What each function's service account may do, on the one resource each grant names; no project-wide role.
# Read it as a table: the promises of DESIGN.md §5 are visible here, and tests/integration/test_terraform.py checks them:
# - only encrypt writes the delivery bucket, and only expire deletes from it (objectUser has delete; objectCreator
#   cannot overwrite, so it cannot delete either);
# - only generate (the fine-tune's secret seed) and watermark (the codeword) use the fingerprint key;
# - only generate reads users' data; expire may list and delete it (a user's deletion), not read it;
# - the models bucket (confidential base models) is read by generate, watermark, the verifier's members and the
#   base publishers only, and written by the base publishers only;
# - only encrypt and expire sign ledger records, and only they write the evidence bucket;
# - publish signs download URLs as itself (signBlob on its own account), with no key file anywhere.

locals {
  # step => bucket => roles. The viewer roles let create-once writes look before they write.
  bucket_roles = {
    generate = {
      models      = ["roles/storage.objectViewer"] # fine-tunes the published base; never trains one
      "user-data" = ["roles/storage.objectViewer"] # the signup's data_ref
      staging     = ["roles/storage.objectUser"]   # a redelivery rewrites its artefact
      state       = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
    }
    watermark = {
      models  = ["roles/storage.objectViewer"]
      staging = ["roles/storage.objectUser"] # reads and deletes the generated model, writes the fingerprinted one
      state   = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
    }
    encrypt = {
      staging  = ["roles/storage.objectUser"]
      delivery = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
      evidence = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
      state    = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
    }
    publish = {
      delivery = ["roles/storage.objectViewer"]
      state    = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
    }
    expire = {
      staging     = ["roles/storage.objectUser"]
      delivery    = ["roles/storage.objectUser"]
      evidence    = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
      state       = ["roles/storage.objectViewer", "roles/storage.objectCreator"]
      "user-data" = [local.object_deleter_role] # a user's deletion: list and delete, never read
    }
  }

  object_deleter_role = "projects/${var.project_id}/roles/${google_project_iam_custom_role.object_deleter.role_id}"

  # step => key => roles
  key_roles = {
    generate  = { envelope = ["roles/cloudkms.cryptoKeyEncrypter"], fingerprint = ["roles/cloudkms.signer"] }
    watermark = { envelope = ["roles/cloudkms.cryptoKeyEncrypterDecrypter"], fingerprint = ["roles/cloudkms.signer"] }
    encrypt   = { envelope = ["roles/cloudkms.cryptoKeyDecrypter"], ledger = ["roles/cloudkms.signer"] }
    publish   = {}
    expire    = { ledger = ["roles/cloudkms.signer"] }
  }

  # step => topics it publishes to: its outputs (publish hands a model delivered after its user was deleted
  # back to expire, the one step that deletes delivered models) and the dead letters
  topic_publishers = { for step, wiring in local.steps : step => concat(wiring.outputs, ["dead-letter"]) }

  verifier_key_roles = {
    ledger      = "roles/cloudkms.publicKeyViewer" # checks every record's signature
    fingerprint = "roles/cloudkms.signer"          # recomputes the codewords (MacSign)
  }

  # The two tables above, one grant a row: "step target role" => { step, target, role }
  step_grants = { for kind, table in { bucket = local.bucket_roles, key = local.key_roles } :
    kind => merge([for step, targets in table : merge([for target, roles in targets : {
      for role in roles : "${step} ${target} ${role}" => { step = step, target = target, role = role }
    }]...)]...)
  }

  bucket_names = merge({ for role, bucket in google_storage_bucket.pipeline : role => bucket.name },
  { evidence = google_storage_bucket.evidence.name })
}

# Deleting objects without reading them: no predefined role is only that.
resource "google_project_iam_custom_role" "object_deleter" {
  project     = var.project_id
  role_id     = "${replace(var.name_prefix, "-", "_")}objectDeleter"
  title       = "iml object deleter"
  description = "Lists and deletes objects, never reads them: expire on the user-data bucket."
  permissions = ["storage.objects.list", "storage.objects.delete"]
}

resource "google_storage_bucket_iam_member" "step" {
  for_each = local.step_grants.bucket

  bucket = local.bucket_names[each.value.target]
  role   = each.value.role
  member = google_service_account.step[each.value.step].member
}

resource "google_kms_crypto_key_iam_member" "step" {
  for_each = local.step_grants.key

  crypto_key_id = local.crypto_key_ids[each.value.target]
  role          = each.value.role
  member        = google_service_account.step[each.value.step].member
}

resource "google_pubsub_topic_iam_member" "step" {
  for_each = merge([for step, topics in local.topic_publishers : {
    for topic in topics : "${step} ${topic}" => { step = step, topic = topic }
  }]...)

  project = var.project_id
  topic   = google_pubsub_topic.iml[each.value.topic].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.step[each.value.step].member
}

# V4 signed URLs through IAM signBlob: publish may sign blobs as itself and as nobody else.
resource "google_service_account_iam_member" "publish_signs_as_itself" {
  service_account_id = google_service_account.step["publish"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.step["publish"].member
}

# Every function writes its structured logs.
resource "google_project_iam_member" "step_logs" {
  for_each = local.steps

  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.step[each.key].member
}

# Legal, running `iml verify --ledger gs://…`: read the ledger and the base model, check the ledger's
# signatures, and recompute fingerprints.
resource "google_storage_bucket_iam_member" "verifier_reads" {
  for_each = { for pair in setproduct(["evidence", "models"], var.verifier_members) :
  "${pair[0]} ${pair[1]}" => { bucket = pair[0], member = pair[1] } }

  bucket = local.bucket_names[each.value.bucket]
  role   = "roles/storage.objectViewer"
  member = each.value.member
}

# The app backend puts users' data where generate reads it; create only: it can neither read nor replace it.
resource "google_storage_bucket_iam_member" "app_writes_user_data" {
  for_each = toset(var.app_backend_members)

  bucket = local.bucket_names["user-data"]
  role   = "roles/storage.objectCreator"
  member = each.value
}

# `iml base publish --bucket`: create-once writes that look before they write.
resource "google_storage_bucket_iam_member" "base_publishers" {
  for_each = { for pair in setproduct(["roles/storage.objectViewer", "roles/storage.objectCreator"], var.base_publisher_members) :
  "${pair[0]} ${pair[1]}" => { role = pair[0], member = pair[1] } }

  bucket = local.bucket_names["models"]
  role   = each.value.role
  member = each.value.member
}

resource "google_kms_crypto_key_iam_member" "verifier" {
  for_each = { for pair in setproduct(keys(local.verifier_key_roles), var.verifier_members) :
  "${pair[0]} ${pair[1]}" => { key = pair[0], member = pair[1] } }

  crypto_key_id = local.crypto_key_ids[each.value.key]
  role          = local.verifier_key_roles[each.value.key]
  member        = each.value.member
}
