output "signup_topic" {
  description = "Topic the app backend publishes signups to (docs/events.md)."
  value       = google_pubsub_topic.iml["signup"].id
}

output "expire_topic" {
  description = "Topic of the hourly expiry; the app backend publishes user deletions here."
  value       = google_pubsub_topic.iml["expire"].id
}

output "ready_subscription" {
  description = "Pull subscription the app backend reads ready messages (signed URLs) from."
  value       = google_pubsub_subscription.ready.id
}

output "dead_letter_subscription" {
  description = "Pull subscription holding every dead-lettered message, with its reason, for 7 days."
  value       = google_pubsub_subscription.dead_letter_review.id
}

output "buckets" {
  description = "Bucket names by role: staging, delivery, models, state, user-data, evidence, sources."
  value       = merge(local.bucket_names, { sources = google_storage_bucket.sources.name })
}

output "function_uris" {
  description = "Each function's URL (internal ingress: reachable from the push subscriptions only)."
  value       = { for step, function in google_cloudfunctions2_function.step : step => function.service_config[0].uri }
}

output "service_accounts" {
  description = "The email of each function's service account, the push identity and the builder."
  value = merge({ for step, account in google_service_account.step : step => account.email },
  { push = google_service_account.push.email, builder = google_service_account.builder.email })
}

output "kms_keys" {
  description = "Cloud KMS key ids by role: cmek, envelope, fingerprint, ledger."
  value       = local.crypto_key_ids
}

output "ledger_signing_key_version" {
  description = "The key version signing ledger records: give it to `iml verify` to check the evidence."
  value       = local.function_environment["IML_KMS_SIGNING_KEY_VERSION"]
}

output "function_environment" {
  description = "The environment every function runs with (what a local run needs to reproduce a deployed one)."
  value       = local.function_environment
}
