locals {
  control_plane_tag = "${var.cluster_name}-control-plane"
  node_labels       = var.node_labels != null ? var.node_labels : { nodewire = "managed", cluster = var.cluster_name }

  # Google Front End health-check ranges and the IAP TCP forwarding range.
  health_check_ranges = ["35.191.0.0/16", "130.211.0.0/22"]
  iap_range           = "35.235.240.0/20"
}

resource "google_compute_network" "vpc" {
  project                 = var.project_id
  name                    = "${var.cluster_name}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.this]
}

resource "google_compute_subnetwork" "nodes" {
  project                  = var.project_id
  name                     = "${var.cluster_name}-nodes"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.node_subnet_cidr
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pod_range_cidr
  }

  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.service_range_cidr
  }

  # GKE-style additional pod ranges (alias-first): used in order once "pods" is full.
  dynamic "secondary_ip_range" {
    for_each = var.additional_pod_ranges
    content {
      range_name    = secondary_ip_range.value.name
      ip_cidr_range = secondary_ip_range.value.cidr
    }
  }

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Direct VPC egress of the Cloud Run services (reaches the API server on 6443).
resource "google_compute_subnetwork" "run" {
  project                  = var.project_id
  name                     = "${var.cluster_name}-run-egress"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.run_subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "internal" {
  project     = var.project_id
  name        = "${var.cluster_name}-allow-internal"
  network     = google_compute_network.vpc.id
  direction   = "INGRESS"
  description = "Node subnet and pod ranges to every VM of the network, all protocols."

  source_ranges = concat([var.node_subnet_cidr], local.pod_range_cidrs)

  allow {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "run_to_api_server" {
  project     = var.project_id
  name        = "${var.cluster_name}-allow-run-apiserver"
  network     = google_compute_network.vpc.id
  direction   = "INGRESS"
  description = "Cloud Run egress subnet to the Kubernetes API server only."

  source_ranges = [var.run_subnet_cidr]
  target_tags   = [local.control_plane_tag]

  allow {
    protocol = "tcp"
    ports    = ["6443"]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "health_checks" {
  project     = var.project_id
  name        = "${var.cluster_name}-allow-health-checks"
  network     = google_compute_network.vpc.id
  direction   = "INGRESS"
  description = "Google health checkers to the nodes (tags added by nodewire)."

  source_ranges = local.health_check_ranges
  target_tags   = var.node_tags

  allow {
    protocol = "tcp"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "iap_ssh" {
  project     = var.project_id
  name        = "${var.cluster_name}-allow-iap-ssh"
  network     = google_compute_network.vpc.id
  direction   = "INGRESS"
  description = "SSH through IAP TCP forwarding only; every VM (unwired nodes have no tags yet)."

  source_ranges = [local.iap_range]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "nat" {
  project = var.project_id
  name    = "${var.cluster_name}-router"
  region  = var.region
  network = google_compute_network.vpc.id
}

# Outbound internet (package repositories, image pulls) for VMs without public IPs.
resource "google_compute_router_nat" "nat" {
  project                            = var.project_id
  name                               = "${var.cluster_name}-nat"
  router                             = google_compute_router.nat.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.nodes.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

locals {
  # Every pod range's CIDR: the firewall, ip-masq-agent and the functions cover all of them.
  pod_range_cidrs = concat([var.pod_range_cidr], [for r in var.additional_pod_ranges : r.cidr])
}
