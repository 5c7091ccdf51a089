locals {
  step_topics = [for s in local.steps : "${local.topic_prefix}${s}"]
  all_topics  = concat(local.step_topics, [local.gce_audit_topic, local.k8s_audit_topic, local.dead_letter_topic, local.wired_topic])

  # Functions fed by a push subscription (all but the scheduler-driven sweep and join, which
  # node VMs call over HTTP).
  push_functions = { for name, f in local.functions : name => f if !contains(["scheduler", "node-vms"], f.source) }

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic" "topic" {
  # checkov:skip=CKV_GCP_83: messages hold event metadata only; Google-managed encryption, no CMEK key ring in this set-up.
  for_each = toset(local.all_topics)

  project                    = var.project_id
  name                       = each.value
  message_retention_duration = "604800s"

  depends_on = [google_project_service.this]
}

# Created in phase 1 already: messages wait (and are retried) until the service exists.
resource "google_pubsub_subscription" "push" {
  for_each = local.push_functions

  project                    = var.project_id
  name                       = "${local.topic_prefix}${each.key}-push"
  topic                      = google_pubsub_topic.topic[each.value.source].id
  ack_deadline_seconds       = var.ack_deadline_secs
  enable_message_ordering    = true
  message_retention_duration = "604800s"

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topic[local.dead_letter_topic].id
    max_delivery_attempts = 100
  }

  # Wrapped push envelope (no_wrapper not set): the functions read attributes and ids from it.
  push_config {
    push_endpoint = local.service_url[each.key]
    oidc_token {
      service_account_email = google_service_account.push[each.key].email
      audience              = local.service_url[each.key]
    }
  }

  expiration_policy {
    ttl = ""
  }
}

# Read by `nodewire replay --dead-letter nodewire-dead-letter`.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = "${local.dead_letter_topic}-review"
  topic                      = google_pubsub_topic.topic[local.dead_letter_topic].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "node_wired" {
  project                    = var.project_id
  name                       = local.wired_topic
  topic                      = google_pubsub_topic.topic[local.wired_topic].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's service agent: forwards to the dead-letter topic, acks the forwarded
# message on its subscription, and mints the push identities' ID tokens.
resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter" {
  project = var.project_id
  topic   = google_pubsub_topic.topic[local.dead_letter_topic].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_subscriber" {
  for_each = google_pubsub_subscription.push

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  for_each = local.push_functions

  service_account_id = google_service_account.push[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}
