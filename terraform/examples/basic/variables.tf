variable "project_id" {
  description = "The project to deploy the IML pipeline into."
  type        = string
}
