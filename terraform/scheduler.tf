# The hourly expiry: a non-empty message (Cloud Scheduler refuses an empty one) on the expire topic, which
# the expire function's push subscription delivers. The body is an ExpireTick (docs/events.md).

resource "google_cloud_scheduler_job" "hourly_expiry" {
  project     = var.project_id
  region      = coalesce(var.scheduler_region, var.region)
  name        = "${var.name_prefix}hourly-expiry"
  description = "Deletes delivered and staging objects past their TTL; the expire function records each deletion."
  schedule    = "0 * * * *"
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.iml["expire"].id
    data       = base64encode(jsonencode({ schema_version = 1, reason = "hourly expiry" }))
  }
}

resource "google_pubsub_topic_iam_member" "scheduler_publishes_expiry" {
  project = var.project_id
  topic   = google_pubsub_topic.iml["expire"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-cloudscheduler.iam.gserviceaccount.com"
}
