output "signup_topic" {
  description = "Where the app backend publishes signups."
  value       = module.iml.signup_topic
}

output "ready_subscription" {
  description = "Where the app backend reads ready messages."
  value       = module.iml.ready_subscription
}
