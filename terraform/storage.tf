# Buckets. Staging, delivery, models, state and user data keep no backup of any kind: versioning off and soft
# delete 0, so an object deleted by the pipeline is gone. Evidence is the opposite: a retention policy keeps every
# ledger record. Everything is CMEK-encrypted, uniform-access and closed to the public.

locals {
  pipeline_buckets = {
    staging = {
      purpose = "KMS-enveloped artefacts between steps; each step deletes what it consumed"
      # the hourly expiry deletes leftovers after staging_max_age_minutes; this rule is the backstop
      delete_after = [{ days = 1, prefixes = null }]
    }
    delivery = {
      purpose      = "models sealed to one device, downloaded through signed URLs"
      delete_after = [{ days = 1, prefixes = null }]
    }
    models = {
      purpose      = "the published base models (`iml base publish`): confidential, read by generate, watermark and the verifier"
      delete_after = []
    }
    user-data = {
      purpose = "each user's own data under <user_id>/, written by the app backend, read by generate (a signup's data_ref)"
      # deleted with the user by expire; this rule deletes what was never deleted otherwise
      delete_after = [{ days = var.user_data_retention_days, prefixes = null }]
    }
    state = {
      purpose = "the runner's claims, outboxes and step markers (exactly-once effects); per-user slots (request limit) and markers (deletion)"
      delete_after = [
        # a claim, an outbox or a step marker outlives every redelivery of the messages it guards
        { days = ceil(var.message_retention_hours / 24) + 1, prefixes = ["claims/", "outbox/", "done/"] },
        # a request-limit slot counts only within its period
        { days = ceil(var.user_limit_period_hours / 24) + 1, prefixes = ["slots/"] },
      ]
    }
  }
}

resource "google_storage_bucket" "pipeline" {
  # checkov:skip=CKV_GCP_78:No backups by design: versioning would keep copies of what the pipeline deletes (staging, delivery) and of per-user state.
  # checkov:skip=CKV_GCP_62:Usage logs record each request URL, signed URL signatures included; Data Access audit logs (observability.tf) record reads without them.
  for_each = local.pipeline_buckets

  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}${each.key}"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = merge(local.labels, { "iml-bucket" = each.key })

  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  encryption {
    default_kms_key_name = local.crypto_key_ids["cmek"]
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.delete_after
    content {
      action {
        type = "Delete"
      }
      condition {
        age            = lifecycle_rule.value.days
        matches_prefix = lifecycle_rule.value.prefixes
      }
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.cmek_users]
}

resource "google_storage_bucket" "evidence" {
  # checkov:skip=CKV_GCP_78:Cloud Storage does not allow versioning with a retention policy; the retention policy is what keeps every record.
  # checkov:skip=CKV_GCP_62:Data Access audit logs (observability.tf) record who read the ledger; a second log bucket would need its own retention story.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}evidence"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = merge(local.labels, { "iml-bucket" = "evidence" })

  retention_policy {
    retention_period = var.evidence_retention_days * 86400
    is_locked        = var.lock_evidence_retention
  }

  soft_delete_policy {
    retention_duration_seconds = 604800 # a deleted record stays recoverable for the 7 days Cloud Storage allows
  }

  encryption {
    default_kms_key_name = local.crypto_key_ids["cmek"]
  }

  depends_on = [google_kms_crypto_key_iam_member.cmek_users]
}

resource "google_storage_bucket" "sources" {
  # checkov:skip=CKV_GCP_62:Holds only the function archives that are also in the repository; audit logs cover it.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}sources"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = merge(local.labels, { "iml-bucket" = "sources" })

  versioning {
    enabled = true
  }

  encryption {
    default_kms_key_name = local.crypto_key_ids["cmek"]
  }

  depends_on = [google_kms_crypto_key_iam_member.cmek_users]
}

# Named by content, so a new archive makes a new object and the functions using it redeploy.
resource "google_storage_bucket_object" "archive" {
  for_each = {
    tensorflow = var.tensorflow_archive
    light      = var.light_archive
  }

  bucket       = google_storage_bucket.sources.name
  name         = "iml-functions-${each.key}-${filemd5(each.value)}.zip"
  source       = each.value
  content_type = "application/zip"
}
