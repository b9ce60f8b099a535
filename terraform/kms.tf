# Cloud KMS: one key ring, four keys. The symmetric keys rotate; the fingerprint and ledger keys are pinned
# by version (variables), because a fingerprint or a signature must stay checkable under the version that
# made it. Keys are created twice over, as terraform-google-kms does: a prevent_destroy copy and an
# ephemeral copy, one of them empty, since lifecycle arguments cannot come from a variable.

locals {
  rotation_period = "${var.key_rotation_days * 86400}s"

  crypto_keys = {
    cmek = { # buckets and topics at rest
      purpose         = "ENCRYPT_DECRYPT"
      algorithm       = "GOOGLE_SYMMETRIC_ENCRYPTION"
      rotation_period = local.rotation_period
    }
    envelope = { # wraps each staging artefact's data key (IML_KMS_WRAP_KEY)
      purpose         = "ENCRYPT_DECRYPT"
      algorithm       = "GOOGLE_SYMMETRIC_ENCRYPTION"
      rotation_period = local.rotation_period
    }
    fingerprint = { # HMAC behind every model's fingerprint codeword (IML_KMS_FINGERPRINT_KEY_VERSION)
      purpose         = "MAC"
      algorithm       = "HMAC_SHA256"
      rotation_period = null
    }
    ledger = { # signs every ledger record (IML_KMS_SIGNING_KEY_VERSION)
      purpose         = "ASYMMETRIC_SIGN"
      algorithm       = "EC_SIGN_P256_SHA256"
      rotation_period = null
    }
  }

  crypto_key_ids = { for name, key in merge(google_kms_crypto_key.protected, google_kms_crypto_key.ephemeral) : name => key.id }
}

resource "google_kms_key_ring" "iml" {
  project  = var.project_id
  name     = "${var.name_prefix}keys"
  location = var.region
}

resource "google_kms_crypto_key" "protected" {
  # checkov:skip=CKV_GCP_43:cmek and envelope rotate every key_rotation_days (at most 90, validated; tests/integration/test_terraform.py checks it) but checkov cannot read a local; the MAC and signing keys cannot rotate automatically in Cloud KMS and roll by version (runbook).
  for_each = var.prevent_destroy ? local.crypto_keys : {}

  name            = "${var.name_prefix}${each.key}"
  key_ring        = google_kms_key_ring.iml.id
  purpose         = each.value.purpose
  rotation_period = each.value.rotation_period
  labels          = local.labels

  version_template {
    algorithm        = each.value.algorithm
    protection_level = var.key_protection_level
  }

  lifecycle {
    prevent_destroy = true
  }
}

resource "google_kms_crypto_key" "ephemeral" {
  # checkov:skip=CKV_GCP_43:cmek and envelope rotate every key_rotation_days (at most 90, validated; tests/integration/test_terraform.py checks it) but checkov cannot read a local; the MAC and signing keys cannot rotate automatically in Cloud KMS and roll by version (runbook).
  # checkov:skip=CKV_GCP_82:This copy exists for prevent_destroy = false (throwaway environments), by the variable's choice.
  for_each = var.prevent_destroy ? {} : local.crypto_keys

  name            = "${var.name_prefix}${each.key}"
  key_ring        = google_kms_key_ring.iml.id
  purpose         = each.value.purpose
  rotation_period = each.value.rotation_period
  labels          = local.labels

  version_template {
    algorithm        = each.value.algorithm
    protection_level = var.key_protection_level
  }
}

# Cloud Storage and Pub/Sub encrypt at rest with the CMEK key through their service agents.
resource "google_kms_crypto_key_iam_member" "cmek_users" {
  for_each = toset([local.gcs_service_agent, local.pubsub_service_agent])

  crypto_key_id = local.crypto_key_ids["cmek"]
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}
