# Topics carry references (bucket, object, model id), never model bytes. Each function is fed by its own push
# subscription, so it carries the retry and dead-letter policy; the function answers 2xx to acknowledge,
# publishes a permanent failure with its reason to the dead-letter topic itself, and fails a transient one so
# Pub/Sub redelivers with backoff, then forwards to the dead-letter topic after max_delivery_attempts.

locals {
  message_retention = "${var.message_retention_hours * 3600}s"
}

resource "google_pubsub_topic" "iml" {
  for_each = toset(local.topics)

  project                    = var.project_id
  name                       = "${var.name_prefix}${each.key}"
  kms_key_name               = local.crypto_key_ids["cmek"]
  message_retention_duration = local.message_retention
  labels                     = local.labels

  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  depends_on = [google_kms_crypto_key_iam_member.cmek_users]
}

# The identity Pub/Sub presents to the functions (an OIDC token); it may invoke them and nothing else.
resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.name_prefix}push"
  display_name = "IML: Pub/Sub push to the functions"
}

resource "google_service_account_iam_member" "pubsub_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_pubsub_subscription" "push" {
  for_each = local.steps

  project                    = var.project_id
  name                       = "${var.name_prefix}${each.key}-push"
  topic                      = google_pubsub_topic.iml[each.value.input].id
  ack_deadline_seconds       = var.functions[each.key].timeout_seconds
  message_retention_duration = local.message_retention
  labels                     = local.labels

  push_config {
    push_endpoint = google_cloudfunctions2_function.step[each.key].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.step[each.key].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${local.retry_minimum_backoff_seconds}s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.iml["dead-letter"].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires for inactivity: a quiet week must not delete the pipeline's wiring
  }

  lifecycle {
    # The redeliveries of a message whose claimant crashed must outlast its claim's lease, or the message is
    # dead-lettered while its work waits to be taken over: each delivery that finds the claim waits, then
    # Pub/Sub waits at least the minimum backoff before the next one.
    precondition {
      condition     = (var.max_delivery_attempts - 1) * (local.retry_minimum_backoff_seconds + local.claim_wait_seconds[each.key]) > local.claim_lease_seconds[each.key]
      error_message = "max_delivery_attempts is too small for ${each.key}'s timeout: its redeliveries would give up before a crashed delivery's claim lapses (docs/delivery.md)."
    }
  }
}

# Pub/Sub forwards undeliverable messages as its service agent: it must publish to the dead-letter topic and
# acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_forwarding" {
  project = var.project_id
  topic   = google_pubsub_topic.iml["dead-letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_forwarding" {
  for_each = local.steps

  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# Nothing forwarded is lost: dead letters wait here, for the longest Pub/Sub allows, to be read and replayed
# (terraform/README.md, runbook).
resource "google_pubsub_subscription" "dead_letter_review" {
  project                    = var.project_id
  name                       = "${var.name_prefix}dead-letter-review"
  topic                      = google_pubsub_topic.iml["dead-letter"].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }
}

# The app backend reads ready messages (each holds a signed URL for one device) here.
resource "google_pubsub_subscription" "ready" {
  project                    = var.project_id
  name                       = "${var.name_prefix}ready-app"
  topic                      = google_pubsub_topic.iml["ready"].id
  ack_deadline_seconds       = 60
  message_retention_duration = local.message_retention
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription_iam_member" "app_reads_ready" {
  for_each = toset(var.app_backend_members)

  project      = var.project_id
  subscription = google_pubsub_subscription.ready.name
  role         = "roles/pubsub.subscriber"
  member       = each.value
}

resource "google_pubsub_topic_iam_member" "app_publishes" {
  for_each = { for pair in setproduct(["signup", "expire"], var.app_backend_members) : "${pair[0]} ${pair[1]}" => pair }

  project = var.project_id
  topic   = google_pubsub_topic.iml[each.value[0]].name
  role    = "roles/pubsub.publisher"
  member  = each.value[1]
}
