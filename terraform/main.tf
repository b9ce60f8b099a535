# The IML pipeline: five Cloud Functions chained by Pub/Sub, their buckets, keys, schedule and alerts.
# One file per concern: storage.tf, kms.tf, pubsub.tf, functions.tf, iam.tf, scheduler.tf, observability.tf.

data "google_project" "this" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

locals {
  labels = merge(var.labels, { "managed-by" = "terraform", "app" = "iml" })

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  gcs_service_agent    = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"

  # The chain, as functions/chain.py defines it (tests/integration/test_terraform.py holds the two together):
  # the topic each step reads, the topics it publishes to, its archive and how many requests an instance
  # serves at once. Topic names are prefix + name, as infra/settings.py Topics.with_prefix builds them.
  topics = ["signup", "generated", "watermarked", "sealed", "ready", "expire", "dead-letter"]
  steps = {
    generate  = { input = "signup", outputs = ["generated"], archive = "tensorflow", concurrency = 1 }
    watermark = { input = "generated", outputs = ["watermarked"], archive = "tensorflow", concurrency = 1 }
    encrypt   = { input = "watermarked", outputs = ["sealed"], archive = "light", concurrency = 1 }
    publish   = { input = "sealed", outputs = ["ready", "expire"], archive = "light", concurrency = 1 }
    expire    = { input = "expire", outputs = [], archive = "light", concurrency = 1 }
  }

  # What functions/main.py reads (README.md, "Entry points and settings"); tests/integration/test_terraform.py keeps the
  # two in step. IML_WORKDIR, IML_URL_SIGNING_KEY_FILE and IML_KMS_ENDPOINT serve local runs only.
  function_environment = {
    IML_BACKEND                     = "gcp"
    IML_PROJECT                     = var.project_id
    IML_STAGING_BUCKET              = google_storage_bucket.pipeline["staging"].name
    IML_DELIVERY_BUCKET             = google_storage_bucket.pipeline["delivery"].name
    IML_MODELS_BUCKET               = google_storage_bucket.pipeline["models"].name
    IML_STATE_BUCKET                = google_storage_bucket.pipeline["state"].name
    IML_USER_DATA_BUCKET            = google_storage_bucket.pipeline["user-data"].name
    IML_EVIDENCE_BUCKET             = google_storage_bucket.evidence.name
    IML_TOPIC_PREFIX                = var.name_prefix
    IML_URL_TTL_MINUTES             = tostring(var.url_ttl_minutes)
    IML_MODEL_MAX_AGE_MINUTES       = tostring(var.model_max_age_minutes)
    IML_STAGING_MAX_AGE_MINUTES     = tostring(var.staging_max_age_minutes)
    IML_USER_MODEL_LIMIT            = tostring(var.user_model_limit)
    IML_USER_LIMIT_PERIOD_HOURS     = tostring(var.user_limit_period_hours)
    IML_WATERMARK_STRENGTH          = tostring(var.watermark_strength)
    IML_RECIPE                      = var.recipe
    IML_KMS                         = "cloud"
    IML_KMS_WRAP_KEY                = local.crypto_key_ids["envelope"]
    IML_KMS_SIGNING_KEY_VERSION     = "${local.crypto_key_ids["ledger"]}/cryptoKeyVersions/${var.signing_key_version}"
    IML_KMS_FINGERPRINT_KEY_VERSION = "${local.crypto_key_ids["fingerprint"]}/cryptoKeyVersions/${var.fingerprint_key_version}"
  }

  # A delivery's claim on a model outlives the function's timeout, so its claimant is gone when another
  # delivery takes the work over; a delivery that finds a live claim waits this long before it fails, to be
  # retried (docs/delivery.md).
  claim_lease_seconds           = { for step, f in var.functions : step => f.timeout_seconds + 30 }
  claim_wait_seconds            = { for step, f in var.functions : step => min(30, floor(f.timeout_seconds / 2)) }
  retry_minimum_backoff_seconds = 10
}
