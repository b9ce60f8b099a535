# The five functions, from the archives `iml package` builds: generate and watermark from the TensorFlow one,
# encrypt, publish and expire from the light one. Each runs as its own service account (iam.tf grants
# exactly what its step touches), takes traffic from inside the project only (the push subscriptions), and
# reads its settings from the same environment variables as a local run.

resource "google_service_account" "step" {
  for_each = local.steps

  project      = var.project_id
  account_id   = "${var.name_prefix}${each.key}"
  display_name = "IML: the ${each.key} function"
}

# Builds the functions' images from the archives; it reads sources, writes images and logs, nothing else.
resource "google_service_account" "builder" {
  project      = var.project_id
  account_id   = "${var.name_prefix}builder"
  display_name = "IML: builds the functions"
}

resource "google_project_iam_member" "builder" {
  for_each = toset(["roles/logging.logWriter", "roles/artifactregistry.writer"])

  project = var.project_id
  role    = each.value
  member  = google_service_account.builder.member
}

resource "google_storage_bucket_iam_member" "builder_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}

resource "google_cloudfunctions2_function" "step" {
  for_each = local.steps

  project     = var.project_id
  name        = "${var.name_prefix}${each.key}"
  location    = var.region
  description = "IML ${each.key}: reads ${var.name_prefix}${each.value.input}"
  labels      = local.labels

  build_config {
    runtime         = "python311"
    entry_point     = each.key
    service_account = google_service_account.builder.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.archive[each.value.archive].name
      }
    }
  }

  service_config {
    available_memory                 = var.functions[each.key].memory
    available_cpu                    = var.functions[each.key].cpu
    timeout_seconds                  = var.functions[each.key].timeout_seconds
    max_instance_count               = var.functions[each.key].max_instances
    max_instance_request_concurrency = each.value.concurrency
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.step[each.key].email
    environment_variables = merge(local.function_environment, {
      IML_CLAIM_LEASE_SECONDS = tostring(local.claim_lease_seconds[each.key])
      IML_CLAIM_WAIT_SECONDS  = tostring(local.claim_wait_seconds[each.key])
    })
  }

  depends_on = [google_project_iam_member.builder, google_storage_bucket_iam_member.builder_reads_sources]
}

# Only the push identity may call a function (a Cloud Functions 2nd gen function is a Cloud Run service).
resource "google_cloud_run_service_iam_member" "push_invokes" {
  for_each = local.steps

  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.step[each.key].name
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}
