# Who read what: Data Access audit logs for Cloud Storage (they name the object and the caller, never a
# signed URL's signature), and an alert when reads on the delivery bucket are denied or miss: someone
# replaying an expired URL, guessing object names, or a leaked identity probing.

resource "google_project_iam_audit_config" "storage" {
  project = var.project_id
  service = "storage.googleapis.com"

  audit_log_config {
    log_type = "ADMIN_READ"
  }
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}

resource "google_logging_metric" "delivery_denied_reads" {
  project     = var.project_id
  name        = "${var.name_prefix}delivery-denied-reads"
  description = "Reads of sealed models on the delivery bucket refused (PERMISSION_DENIED) or missing (NOT_FOUND)."
  filter      = <<-EOT
    resource.type="gcs_bucket"
    resource.labels.bucket_name="${google_storage_bucket.pipeline["delivery"].name}"
    protoPayload.methodName="storage.objects.get"
    (protoPayload.status.code=7 OR protoPayload.status.code=5)
  EOT

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

resource "google_monitoring_alert_policy" "delivery_denied_reads" {
  project               = var.project_id
  display_name          = "IML: denied or missing reads on the delivery bucket"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "a read of a sealed model was refused or missed"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.delivery_denied_reads.name}\" AND resource.type=\"gcs_bucket\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_DELTA"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Reads on the IML delivery bucket were denied or missed. Follow \"Answering an access-error alert\" in terraform/README.md."
  }
}
