# nodewire's Cloud Run services, their configuration, images and kube credentials.

locals {
  k8s_audit_log_id = "k8s_audit" # the Ops Agent receiver id = the log id
  topic_prefix     = "nodewire-"
  # step topics: "${local.topic_prefix}${step}"
  steps             = ["bootstrap", "assign-alias", "tag-instance", "provider-id", "finalize", "release-alias", "decommission"]
  gce_audit_topic   = "gce-audit"
  k8s_audit_topic   = "k8s-audit"
  dead_letter_topic = "nodewire-dead-letter"
  wired_topic       = "nodewire-node-wired"

  # One entry per Cloud Run service = per binary under functions/. Keys are the function names.
  # source: the topic id whose push subscription delivers to it, "scheduler" (drift-sweep), or
  # "node-vms" (join: node VMs call it over HTTP with their instance identity token; no
  # subscription, no push identity).
  # compute_permissions: exactly the IAM permissions of its Compute calls (custom role).
  # publishes: topic ids it may publish to (besides the dead-letter topic, which all may).
  # kube: whether it talks to the Kubernetes API (gets the connection env + secret volumes).
  # chain: whether it is a step function or the sweep (gets the chain's variables).
  functions = {
    "instance-events" = { source = "gce-audit", kube = false, chain = false, compute_permissions = [], publishes = ["nodewire-bootstrap", "nodewire-decommission"] }
    "node-events"     = { source = "k8s-audit", kube = true, chain = false, compute_permissions = ["compute.instances.list"], publishes = ["nodewire-assign-alias", "nodewire-release-alias"] }
    "bootstrap"       = { source = "nodewire-bootstrap", kube = true, chain = true, compute_permissions = ["compute.instances.get", "compute.instances.setMetadata", "compute.instances.setTags", "compute.instances.updateNetworkInterface", "compute.subnetworks.use", "compute.zoneOperations.get"], publishes = ["nodewire-assign-alias", "nodewire-tag-instance", "nodewire-provider-id", "nodewire-finalize"] }
    "assign-alias"    = { source = "nodewire-assign-alias", kube = true, chain = true, compute_permissions = ["compute.instances.get", "compute.instances.list", "compute.instances.updateNetworkInterface", "compute.subnetworks.use", "compute.zoneOperations.get"], publishes = ["nodewire-bootstrap", "nodewire-tag-instance", "nodewire-provider-id", "nodewire-finalize"] }
    "tag-instance"    = { source = "nodewire-tag-instance", kube = true, chain = true, compute_permissions = ["compute.instances.get", "compute.instances.setTags", "compute.zoneOperations.get"], publishes = ["nodewire-assign-alias", "nodewire-provider-id", "nodewire-finalize"] }
    "provider-id"     = { source = "nodewire-provider-id", kube = true, chain = true, compute_permissions = ["compute.instances.get"], publishes = ["nodewire-assign-alias", "nodewire-tag-instance", "nodewire-finalize"] }
    "finalize"        = { source = "nodewire-finalize", kube = true, chain = true, compute_permissions = ["compute.instances.get", "compute.instances.setMetadata", "compute.zoneOperations.get"], publishes = ["nodewire-assign-alias", "nodewire-tag-instance", "nodewire-provider-id", "nodewire-node-wired"] }
    "join"            = { source = "node-vms", kube = true, chain = true, compute_permissions = ["compute.instances.get"], publishes = ["nodewire-assign-alias"] }
    "release-alias"   = { source = "nodewire-release-alias", kube = true, chain = true, compute_permissions = ["compute.instances.get", "compute.instances.updateNetworkInterface", "compute.zoneOperations.get"], publishes = ["nodewire-bootstrap"] }
    "decommission"    = { source = "nodewire-decommission", kube = true, chain = true, compute_permissions = ["compute.instances.get"], publishes = [] }
    "drift-sweep"     = { source = "scheduler", kube = true, chain = true, compute_permissions = ["compute.instances.get", "compute.instances.list"], publishes = ["nodewire-bootstrap", "nodewire-assign-alias", "nodewire-tag-instance", "nodewire-provider-id", "nodewire-finalize", "nodewire-release-alias", "nodewire-decommission"] }
  }

  # All but the functions node VMs call (join): those have no push identity.
  pushed_functions = { for name, f in local.functions : name => f if f.source != "node-vms" }

  # The deterministic Cloud Run URL: https://SERVICE-PROJECT_NUMBER.REGION.run.app
  service_url = { for name, f in local.functions : name => "https://nodewire-${name}-${data.google_project.this.number}.${var.region}.run.app" }

  # Environment of every service, built from one map: common + (kube ? chain : {}) + per-service push auth.
  env_common = {
    NODEWIRE_PROJECT              = var.project_id
    NODEWIRE_INSTANCE_PREFIX      = "${var.cluster_name}-node-"
    NODEWIRE_SELECTOR_LABELS      = join(",", [for k, v in local.node_labels : "${k}=${v}"])
    NODEWIRE_TOPIC_PREFIX         = local.topic_prefix
    NODEWIRE_DEAD_LETTER_TOPIC    = local.dead_letter_topic
    NODEWIRE_GCE_AUDIT_TOPIC      = local.gce_audit_topic
    NODEWIRE_K8S_AUDIT_TOPIC      = local.k8s_audit_topic
    NODEWIRE_REQUEST_TIMEOUT_SECS = tostring(var.request_timeout_secs)
    NODEWIRE_MAX_RETRY_AGE_SECS   = "3600"
    NODEWIRE_PUSH_AUTH            = var.push_auth_mode
    NODEWIRE_K8S_AUDIT_LOG        = "projects/${var.project_id}/logs/${local.k8s_audit_log_id}"
    # Also node-events': in metadata mode it decides the kubelets' bootstrap-token CSRs.
    NODEWIRE_JOIN_MODE = var.join_mode
    LOG_FORMAT         = "json"
  }
  env_kube = {
    NODEWIRE_KUBE_API_URL    = "https://${google_compute_address.control_plane.address}:6443"
    NODEWIRE_KUBE_TOKEN_FILE = "/var/run/nodewire/kube-token/token"
    NODEWIRE_KUBE_CA_FILE    = "/var/run/nodewire/kube-ca/ca.crt"
  }
  env_chain = {
    NODEWIRE_SUBNET                = "${var.region}/${google_compute_subnetwork.nodes.name}"
    NODEWIRE_POD_RANGE             = var.pod_range_cidr
    NODEWIRE_POD_RANGE_NAME        = "pods"
    NODEWIRE_NODE_TAGS             = join(",", var.node_tags)
    NODEWIRE_NODE_SERVICE_ACCOUNTS = google_service_account.node.email
    NODEWIRE_API_SERVER_ENDPOINT   = "${google_compute_address.control_plane.address}:6443"
    NODEWIRE_JOIN_API_VERSION      = "v1beta4"
    NODEWIRE_TOKEN_TTL_SECS        = "900"
    NODEWIRE_RANGE_ORDER           = var.range_order
    NODEWIRE_ADDITIONAL_POD_RANGES = join(",", [for r in var.additional_pod_ranges : "${r.name}=${r.cidr}"])
  }
  # The callers a service accepts: its push (or scheduler) identity; for join the node VMs'
  # identity tokens, whose signature it verifies itself (invoker IAM check disabled).
  push_auth = { for name, f in local.functions : name => f.source == "node-vms" ? {
    NODEWIRE_PUSH_AUTH      = "oidc"
    NODEWIRE_PUSH_AUDIENCES = local.service_url[name]
    NODEWIRE_PUSH_INVOKERS  = google_service_account.node.email
    } : {
    NODEWIRE_PUSH_AUTH      = var.push_auth_mode
    NODEWIRE_PUSH_AUDIENCES = local.service_url[name]
    NODEWIRE_PUSH_INVOKERS  = google_service_account.push[name].email
  } }
  env = { for name, f in local.functions : name => merge(local.env_common, f.kube ? local.env_kube : {}, f.chain ? local.env_chain : {}, local.push_auth[name]) }

  # Pull mode: the nodes ask this URL for their JoinConfiguration (instance metadata
  # nodewire-join-url; the identity token's audience).
  join_url = local.service_url["join"]
}

resource "google_artifact_registry_repository" "nodewire" {
  # checkov:skip=CKV_GCP_84: build outputs without secrets; Google-managed encryption, no CMEK key ring in this set-up.
  project       = var.project_id
  location      = var.region
  repository_id = "nodewire"
  format        = "DOCKER"
  description   = "nodewire function images (one per Cloud Run service)."

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.this]
}

# The control plane adds the versions (a service-account token and the cluster CA).
resource "google_secret_manager_secret" "kube_token" {
  project   = var.project_id
  secret_id = "nodewire-kube-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.this]
}

# The join service's own Kubernetes identity (kube-system/nodewire-join: CSRs and their
# approval for the kubelet client signer, nothing else); the control plane adds the versions.
resource "google_secret_manager_secret" "kube_join_token" {
  project   = var.project_id
  secret_id = "nodewire-kube-join-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.this]
}

resource "google_secret_manager_secret" "kube_ca" {
  project   = var.project_id
  secret_id = "nodewire-kube-ca"

  replication {
    auto {}
  }

  depends_on = [google_project_service.this]
}

# Runtime identity of each service.
resource "google_service_account" "runtime" {
  for_each = local.functions

  project      = var.project_id
  account_id   = "nw-${each.key}"
  display_name = "nodewire ${each.key} (runtime)"

  depends_on = [google_project_service.this]
}

# Identity of the push subscription (drift-sweep: the scheduler job) delivering to each service.
# None for join: node VMs call it with their own identity tokens.
resource "google_service_account" "push" {
  for_each = local.pushed_functions

  project      = var.project_id
  account_id   = "nw-push-${each.key}"
  display_name = "nodewire ${each.key} (push identity)"

  depends_on = [google_project_service.this]
}

# Internal ingress: Pub/Sub and Cloud Scheduler reach it as Google services, the node VMs
# (join) through Private Google Access on the node subnet (network.tf).
resource "google_cloud_run_v2_service" "function" {
  for_each = { for k, v in local.functions : k => v if contains(keys(var.images), k) }

  project             = var.project_id
  name                = "nodewire-${each.key}"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false
  # join: always disabled. The nodes' service account has no roles and must keep none (not
  # even run.invoker); the service verifies the VMs' identity tokens (RS256, audience, email)
  # itself, with NODEWIRE_PUSH_AUTH=oidc.
  invoker_iam_disabled = each.value.source == "node-vms" ? true : var.push_auth_mode == "oidc"

  template {
    service_account                  = google_service_account.runtime[each.key].email
    timeout                          = "${var.cloud_run_timeout_secs}s"
    max_instance_request_concurrency = 80

    scaling {
      min_instance_count = 0
      max_instance_count = var.max_instances
    }

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = google_compute_network.vpc.id
        subnetwork = google_compute_subnetwork.run.id
      }
    }

    containers {
      image = var.images[each.key]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "256Mi"
        }
        cpu_idle = true
      }

      startup_probe {
        tcp_socket {
          port = 8080
        }
        period_seconds    = 2
        timeout_seconds   = 1
        failure_threshold = 15
      }

      dynamic "env" {
        for_each = local.env[each.key]
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "volume_mounts" {
        for_each = each.value.kube ? { kube-token = "/var/run/nodewire/kube-token", kube-ca = "/var/run/nodewire/kube-ca" } : {}
        content {
          name       = volume_mounts.key
          mount_path = volume_mounts.value
        }
      }
    }

    dynamic "volumes" {
      for_each = each.value.kube ? {
        kube-token = { secret = local.kube_token_of[each.key], path = "token" }
        kube-ca    = { secret = google_secret_manager_secret.kube_ca.secret_id, path = "ca.crt" }
      } : {}
      content {
        name = volumes.key
        secret {
          secret = volumes.value.secret
          items {
            version = "latest"
            path    = volumes.value.path
          }
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.runtime_kube,
    google_project_iam_member.runtime_compute,
    google_pubsub_topic_iam_member.runtime_publisher,
  ]
}

# Only the service's own push identity may invoke it (join has none: see invoker_iam_disabled).
resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = { for k, v in google_cloud_run_v2_service.function : k => v if contains(keys(local.pushed_functions), k) }

  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = google_service_account.push[each.key].member
}
