# The smallest deployment: the archives built by `iml package` from this commit, one project, the defaults.
#
#   iml package --out dist            # from the repository root
#   cd terraform/examples/basic
#   terraform init && terraform apply -var project_id=YOUR_PROJECT

provider "google" {
  project = var.project_id
  region  = "europe-west1"
}

module "iml" {
  source = "../.."

  project_id         = var.project_id
  tensorflow_archive = "${path.module}/../../../dist/iml-functions-tensorflow.zip"
  light_archive      = "${path.module}/../../../dist/iml-functions-light.zip"

  app_backend_members = ["serviceAccount:app-backend@${var.project_id}.iam.gserviceaccount.com"]
  verifier_members    = ["group:legal@example.com"]
  labels              = { env = "example" }
}
