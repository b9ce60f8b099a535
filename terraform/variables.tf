variable "project_id" {
  description = "The project everything is created in."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id: 6 to 30 lowercase letters, digits or hyphens."
  }
}

variable "region" {
  description = "Region of the buckets, the key ring, the functions and the Pub/Sub message storage. CMEK keys must live where the data does, so all of them share it."
  type        = string
  default     = "europe-west1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a single Google Cloud region such as europe-west1 (multi-regions do not match the key ring)."
  }
}

variable "scheduler_region" {
  description = "Region of the hourly Cloud Scheduler job; null means var.region (Cloud Scheduler is not offered in every region)."
  type        = string
  default     = null

  validation {
    condition     = var.scheduler_region == null || can(regex("^[a-z]+-[a-z]+[0-9]+$", var.scheduler_region))
    error_message = "scheduler_region must be a Google Cloud region such as europe-west1, or null."
  }
}

variable "name_prefix" {
  description = "Prefix of every name this module creates: topics (the functions read it as IML_TOPIC_PREFIX), functions, service accounts, keys; buckets are named <project_id>-<name_prefix><role>."
  type        = string
  default     = "iml-"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}-$", var.name_prefix))
    error_message = "name_prefix must be 3 to 13 lowercase letters, digits or hyphens, start with a letter and end with a hyphen (service account ids are at most 30 characters)."
  }
}

variable "labels" {
  description = "Labels put on every resource that takes them."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([for key, value in var.labels :
    can(regex("^[a-z][a-z0-9_-]{0,62}$", key)) && can(regex("^[a-z0-9_-]{0,63}$", value))])
    error_message = "Label keys must start with a lowercase letter; keys and values may hold lowercase letters, digits, _ and -, at most 63 characters."
  }
}

variable "tensorflow_archive" {
  description = "Path of iml-functions-tensorflow.zip (generate, watermark), built by `iml package` from the same commit."
  type        = string

  validation {
    condition     = endswith(var.tensorflow_archive, "iml-functions-tensorflow.zip")
    error_message = "tensorflow_archive must be the iml-functions-tensorflow.zip that `iml package` builds."
  }
}

variable "light_archive" {
  description = "Path of iml-functions-light.zip (encrypt, publish, expire), built by `iml package` from the same commit."
  type        = string

  validation {
    condition     = endswith(var.light_archive, "iml-functions-light.zip")
    error_message = "light_archive must be the iml-functions-light.zip that `iml package` builds."
  }
}

variable "url_ttl_minutes" {
  description = "Lifetime of a download URL, in minutes (IML_URL_TTL_MINUTES). V4 signed URLs live 7 days at most."
  type        = number
  default     = 15

  validation {
    condition     = var.url_ttl_minutes >= 1 && var.url_ttl_minutes <= 10080 && floor(var.url_ttl_minutes) == var.url_ttl_minutes
    error_message = "url_ttl_minutes must be a whole number from 1 to 10080 (7 days)."
  }
}

variable "model_max_age_minutes" {
  description = "Age after which the hourly expiry deletes a delivered model (IML_MODEL_MAX_AGE_MINUTES). The bucket's lifecycle rule deletes anything older than a day as a backstop, so this stays under a day."
  type        = number
  default     = 60

  validation {
    condition     = var.model_max_age_minutes >= 1 && var.model_max_age_minutes <= 1440 && floor(var.model_max_age_minutes) == var.model_max_age_minutes
    error_message = "model_max_age_minutes must be a whole number from 1 to 1440."
  }
}

variable "staging_max_age_minutes" {
  description = "Age after which the hourly expiry deletes a leftover staging object (IML_STAGING_MAX_AGE_MINUTES); under a day, as for delivered models."
  type        = number
  default     = 60

  validation {
    condition     = var.staging_max_age_minutes >= 1 && var.staging_max_age_minutes <= 1440 && floor(var.staging_max_age_minutes) == var.staging_max_age_minutes
    error_message = "staging_max_age_minutes must be a whole number from 1 to 1440."
  }
}

variable "user_model_limit" {
  description = "Most models one user may be issued within user_limit_period_hours (IML_USER_MODEL_LIMIT); the next request is dead-lettered with the reason."
  type        = number
  default     = 5

  validation {
    condition     = var.user_model_limit >= 1 && var.user_model_limit <= 1000 && floor(var.user_model_limit) == var.user_model_limit
    error_message = "user_model_limit must be a whole number from 1 to 1000."
  }
}

variable "user_limit_period_hours" {
  description = "The period of the per-user limit, in hours (IML_USER_LIMIT_PERIOD_HOURS)."
  type        = number
  default     = 24

  validation {
    condition     = var.user_limit_period_hours >= 1 && var.user_limit_period_hours <= 8784 && floor(var.user_limit_period_hours) == var.user_limit_period_hours
    error_message = "user_limit_period_hours must be a whole number from 1 to 8784 (a leap year)."
  }
}

variable "watermark_strength" {
  description = "Fingerprint amplitude relative to each layer's weight spread (IML_WATERMARK_STRENGTH); see docs/verifier.md for what it costs and buys."
  type        = number
  default     = 0.08

  validation {
    condition     = var.watermark_strength > 0 && var.watermark_strength <= 1
    error_message = "watermark_strength must be above 0 and at most 1."
  }
}

variable "recipe" {
  description = "The recipe every model is made by (IML_RECIPE): an installed recipe's name (`iml recipes`); its base model must be published (`iml base publish`) before the first signup."
  type        = string
  default     = "digits-mlp"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.recipe))
    error_message = "recipe must be lowercase letters, digits and dashes, at most 40 characters, starting with a letter."
  }
}

variable "user_data_retention_days" {
  description = "Age after which the user-data bucket's lifecycle rule deletes a user's data object (a user's deletion deletes it at once)."
  type        = number
  default     = 30

  validation {
    condition     = var.user_data_retention_days >= 1 && var.user_data_retention_days <= 3650 && floor(var.user_data_retention_days) == var.user_data_retention_days
    error_message = "user_data_retention_days must be a whole number of days from 1 to 3650."
  }
}

variable "evidence_retention_days" {
  description = "How long each ledger record is kept, in days: the evidence bucket's retention policy (nobody can delete or overwrite a record younger than this)."
  type        = number
  default     = 2557

  validation {
    condition     = var.evidence_retention_days >= 1 && var.evidence_retention_days <= 36500 && floor(var.evidence_retention_days) == var.evidence_retention_days
    error_message = "evidence_retention_days must be a whole number from 1 to 36500."
  }
}

variable "lock_evidence_retention" {
  description = "Lock the evidence bucket's retention policy. Irreversible: once locked the period can only grow and the bucket cannot be deleted before its records expire. Lock after the first review of the deployment (terraform/README.md, runbook)."
  type        = bool
  default     = false
}

variable "key_rotation_days" {
  description = "Rotation period of the symmetric keys (bucket CMEK and the staging envelope key), in days."
  type        = number
  default     = 90

  validation {
    condition     = var.key_rotation_days >= 1 && var.key_rotation_days <= 90 && floor(var.key_rotation_days) == var.key_rotation_days
    error_message = "key_rotation_days must be a whole number from 1 to 90."
  }
}

variable "key_protection_level" {
  description = "Where the Cloud KMS keys live: HSM or SOFTWARE."
  type        = string
  default     = "HSM"

  validation {
    condition     = contains(["HSM", "SOFTWARE"], var.key_protection_level)
    error_message = "key_protection_level must be HSM or SOFTWARE."
  }
}

variable "prevent_destroy" {
  description = "Refuse to destroy the Cloud KMS keys (lifecycle prevent_destroy, as terraform-google-kms does). Destroying a key makes every ledger signature and fingerprint under it unverifiable. Set false only for throwaway environments."
  type        = bool
  default     = true
}

variable "signing_key_version" {
  description = "The version of the ledger signing key the functions sign with (IML_KMS_SIGNING_KEY_VERSION). Raise it after adding a version to roll the key (runbook)."
  type        = number
  default     = 1

  validation {
    condition     = var.signing_key_version >= 1 && floor(var.signing_key_version) == var.signing_key_version
    error_message = "signing_key_version must be a whole number of at least 1."
  }
}

variable "fingerprint_key_version" {
  description = "The version of the fingerprint HMAC key behind new fingerprints (IML_KMS_FINGERPRINT_KEY_VERSION). Every model records the version it used; keep old versions enabled while their models may leak."
  type        = number
  default     = 1

  validation {
    condition     = var.fingerprint_key_version >= 1 && floor(var.fingerprint_key_version) == var.fingerprint_key_version
    error_message = "fingerprint_key_version must be a whole number of at least 1."
  }
}

variable "message_retention_hours" {
  description = "How long topics and subscriptions keep messages, in hours. Messages carry references, never model bytes; short retention keeps what a compromise could replay small. The dead-letter review subscription keeps 7 days whatever this says."
  type        = number
  default     = 24

  validation {
    condition     = var.message_retention_hours >= 1 && var.message_retention_hours <= 168 && floor(var.message_retention_hours) == var.message_retention_hours
    error_message = "message_retention_hours must be a whole number from 1 to 168."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message to a function before Pub/Sub forwards it to the dead-letter topic. Enough that the redeliveries of a crashed delivery's message outlast its claim (a precondition in pubsub.tf checks it against each function's timeout)."
  type        = number
  default     = 16

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100 && floor(var.max_delivery_attempts) == var.max_delivery_attempts
    error_message = "max_delivery_attempts must be a whole number from 5 to 100 (Pub/Sub's bounds)."
  }
}

variable "functions" {
  description = "Memory, CPU, timeout and instance limits per function. The defaults come from bench/cold_start.py: generate and watermark peak near 700 MiB with TensorFlow, encrypt, publish and expire near 100 MiB."
  type = map(object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    max_instances   = number
  }))
  default = {
    generate  = { memory = "2Gi", cpu = "1", timeout_seconds = 300, max_instances = 20 }
    watermark = { memory = "2Gi", cpu = "1", timeout_seconds = 300, max_instances = 20 }
    encrypt   = { memory = "512Mi", cpu = "1", timeout_seconds = 120, max_instances = 20 }
    publish   = { memory = "256Mi", cpu = "0.167", timeout_seconds = 60, max_instances = 20 }
    expire    = { memory = "256Mi", cpu = "0.167", timeout_seconds = 540, max_instances = 1 }
  }

  validation {
    condition     = toset(keys(var.functions)) == toset(["generate", "watermark", "encrypt", "publish", "expire"])
    error_message = "functions must name exactly generate, watermark, encrypt, publish and expire."
  }

  validation {
    condition = alltrue([for f in values(var.functions) :
      can(regex("^[0-9]+(Mi|Gi)$", f.memory)) && f.timeout_seconds >= 10 && f.timeout_seconds <= 600 &&
    f.max_instances >= 1])
    error_message = "Each function needs memory like 512Mi or 2Gi, a timeout from 10 to 600 seconds (a push subscription waits at most 600) and at least one instance."
  }
}

variable "app_backend_members" {
  description = "IAM principals of the app backend (for example serviceAccount:backend@PROJECT.iam.gserviceaccount.com): they write users' data to the user-data bucket (create only: they cannot read it back), publish signups and user deletions, and read ready messages."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.app_backend_members : can(regex("^(serviceAccount|group|user|principal|principalSet):", m))])
    error_message = "Each member must be an IAM principal such as serviceAccount:NAME@PROJECT.iam.gserviceaccount.com."
  }
}

variable "base_publisher_members" {
  description = "IAM principals who run `iml base publish --bucket` (the model owner's ML operations): they create base model objects in the models bucket and read them back (a publication completes or checks what is there); nobody can overwrite or delete one."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.base_publisher_members : can(regex("^(serviceAccount|group|user|principal|principalSet):", m))])
    error_message = "Each member must be an IAM principal such as group:ml-ops@example.com."
  }
}

variable "verifier_members" {
  description = "IAM principals who run `iml verify` on leaked models (legal): they read the ledger and the base model, the ledger's public key, and may compute fingerprints."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.verifier_members : can(regex("^(serviceAccount|group|user|principal|principalSet):", m))])
    error_message = "Each member must be an IAM principal such as group:legal@example.com."
  }
}

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/PROJECT/notificationChannels/ID) told when reads on the delivery bucket are denied or miss."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "Each channel must be a full id: projects/PROJECT/notificationChannels/ID."
  }
}
