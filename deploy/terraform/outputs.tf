output "runtime_service_account" {
  description = "Email of the account the functions run as."
  value       = google_service_account.runtime.email
}

output "trigger_service_account" {
  description = "Email of the account Eventarc delivers events as."
  value       = google_service_account.trigger.email
}

output "ledger_bucket" {
  description = "The run ledger bucket."
  value       = google_storage_bucket.ledger.name
}

output "completion_topic" {
  description = "Topic the completion events are published on."
  value       = google_pubsub_topic.completion.id
}

output "dead_letter_topic" {
  description = "Topic receiving events that exhausted their deliveries (read them from <topic>-sub)."
  value       = google_pubsub_topic.dead_letter.id
}

output "sweep_topic" {
  description = "Topic the scheduler ticks on."
  value       = google_pubsub_topic.sweep.id
}

output "event_functions" {
  description = "Names of the event-driven functions."
  value       = sort(keys(local.event_functions))
}

output "api_url" {
  description = "URL of the REST trigger API (authenticated callers only), or null."
  value       = var.deploy_api ? google_cloudfunctions2_function.api[0].service_config[0].uri : null
}
