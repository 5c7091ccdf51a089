# Per-function least privilege: a custom role of exactly its Compute permissions,
# publish on its topics (and the dead-letter topic), the kube secrets when it talks to Kubernetes.

locals {
  compute_functions = { for name, f in local.functions : name => f if length(f.compute_permissions) > 0 }
  kube_functions    = { for name, f in local.functions : name => f if f.kube }
  # setMetadata on a VM that runs as a service account also needs iam.serviceAccounts.actAs
  # on that account (Compute Engine's IAM documentation).
  acts_as_node_functions = { for name, f in local.functions : name => f if contains(f.compute_permissions, "compute.instances.setMetadata") }

  runtime_publishes = {
    for pair in flatten([
      for name, f in local.functions : [
        for topic in distinct(concat(f.publishes, [local.dead_letter_topic])) : { function = name, topic = topic }
      ]
    ]) : "${pair.function}/${pair.topic}" => pair
  }

  # What the control plane writes: both service-account tokens and the CA.
  kube_secrets = {
    token      = google_secret_manager_secret.kube_token.secret_id
    join_token = google_secret_manager_secret.kube_join_token.secret_id
    ca         = google_secret_manager_secret.kube_ca.secret_id
  }

  # Each Kubernetes-facing function reads one token: the join service its own identity's, every
  # other function nodewire's.
  kube_token_of = {
    for name, f in local.kube_functions : name => (
      name == "join" ? google_secret_manager_secret.kube_join_token.secret_id : google_secret_manager_secret.kube_token.secret_id
    )
  }

  runtime_kube_secrets = {
    for pair in flatten([
      for name, f in local.kube_functions : [
        { function = name, key = "token", secret = local.kube_token_of[name] },
        { function = name, key = "ca", secret = google_secret_manager_secret.kube_ca.secret_id },
      ]
    ]) : "${pair.function}/${pair.key}" => pair
  }
}

resource "google_project_iam_custom_role" "function" {
  for_each = local.compute_functions

  project     = var.project_id
  role_id     = "nodewire_${replace(each.key, "-", "_")}"
  title       = "nodewire ${each.key}"
  description = "Compute permissions of the nodewire-${each.key} service."
  permissions = each.value.compute_permissions
}

resource "google_project_iam_member" "runtime_compute" {
  for_each = local.compute_functions

  project = var.project_id
  role    = google_project_iam_custom_role.function[each.key].name
  member  = google_service_account.runtime[each.key].member
}

resource "google_service_account_iam_member" "runtime_acts_as_node" {
  for_each = local.acts_as_node_functions

  service_account_id = google_service_account.node.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.runtime[each.key].member
}

resource "google_pubsub_topic_iam_member" "runtime_publisher" {
  for_each = local.runtime_publishes

  project = var.project_id
  topic   = google_pubsub_topic.topic[each.value.topic].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.runtime[each.value.function].member
}

resource "google_secret_manager_secret_iam_member" "runtime_kube" {
  for_each = local.runtime_kube_secrets

  project   = var.project_id
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime[each.value.function].member
}

# The control plane writes the versions of both kube secrets.
# The control plane reads the latest versions to add one only when the token or CA changed.
resource "google_secret_manager_secret_iam_member" "control_plane_reader" {
  for_each = local.kube_secrets

  project   = var.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.control_plane.member
}

resource "google_secret_manager_secret_iam_member" "control_plane_version_adder" {
  for_each = local.kube_secrets

  project   = var.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretVersionAdder"
  member    = google_service_account.control_plane.member
}
