output "service_urls" {
  description = "Deterministic Cloud Run URL of every function (also the push audiences)."
  value       = local.service_url
}

output "join_url" {
  description = "URL of the join service (pull mode): the nodes' nodewire-join-url and their identity tokens' audience."
  value       = local.join_url
}

output "deployed_services" {
  description = "Functions whose Cloud Run service exists (an image was given)."
  value       = sort(keys(google_cloud_run_v2_service.function))
}

output "topics" {
  description = "Pub/Sub topic ids."
  value       = sort([for t in google_pubsub_topic.topic : t.name])
}

output "dead_letter_subscription" {
  description = "Pull subscription of the dead-letter topic (nodewire replay --dead-letter)."
  value       = google_pubsub_subscription.dead_letter.name
}

output "node_wired_subscription" {
  description = "Pull subscription of the node-wired topic."
  value       = google_pubsub_subscription.node_wired.name
}

output "control_plane_ip" {
  description = "Internal IP of the Kubernetes API server."
  value       = google_compute_address.control_plane.address
}

output "node_service_account" {
  description = "Service account of the node VMs (NODEWIRE_NODE_SERVICE_ACCOUNTS)."
  value       = google_service_account.node.email
}

output "runtime_service_accounts" {
  description = "Runtime service account email per function."
  value       = { for name, sa in google_service_account.runtime : name => sa.email }
}

output "push_service_accounts" {
  description = "Push (and scheduler) identity email per function."
  value       = { for name, sa in google_service_account.push : name => sa.email }
}

output "artifact_registry_url" {
  description = "Docker repository for the function images."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.nodewire.repository_id}"
}
