terraform {
  required_version = ">= 1.5, < 2.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # soft_delete_policy on buckets needs 5.22+; build_config.service_account on functions needs 6.x
      version = ">= 6.0, < 8.0"
    }
  }
}
