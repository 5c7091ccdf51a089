resource "google_service_account" "node" {
  project      = var.project_id
  account_id   = "${var.cluster_name}-node"
  display_name = "${var.cluster_name} nodes"
  description  = "Node VMs; nodewire hands join tokens only to VMs running as this account."

  depends_on = [google_project_service.this]
}

# No roles: the account is the nodes' identity (nodewire hands join tokens only to VMs running
# as it), not a grant. Nothing on a node, a Pod included, can call a Google API with it.
# No network tags here: nodewire adds var.node_tags once the VM is wired.
resource "google_compute_instance_template" "node" {
  # checkov:skip=CKV_GCP_36: nodes route pod traffic (alias range = podCIDR); nodewire bootstrap refuses VMs without canIpForward.
  project        = var.project_id
  name_prefix    = "${var.cluster_name}-node-"
  region         = var.region
  machine_type   = var.node_machine_type
  can_ip_forward = true
  labels         = local.node_labels

  disk {
    source_image = "debian-cloud/debian-12"
    auto_delete  = true
    boot         = true
    disk_size_gb = 30
    disk_type    = "pd-balanced"
  }

  network_interface {
    subnetwork = google_compute_subnetwork.nodes.id
  }

  service_account {
    email  = google_service_account.node.email
    scopes = ["https://www.googleapis.com/auth/userinfo.email"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    # One file per VM: the shared functions, then the script (infra/startup/common.sh says so).
    startup-script         = join("\n", [file("${path.module}/../startup/common.sh"), file("${path.module}/../startup/node.sh")])
    block-project-ssh-keys = "true"
    enable-oslogin         = "TRUE"
    nodewire-node-config = jsonencode({
      kubernetes_version = var.kubernetes_version
      cluster_name       = var.cluster_name
    })
    # How the node gets its JoinConfiguration (node.sh): pull = POST nodewire-join-url/v1/join
    # with an instance identity token for that audience; metadata = wait for kubeadm-join.
    # Neither value is secret.
    nodewire-join-mode = var.join_mode
    nodewire-join-url  = local.join_url
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_region_instance_group_manager" "nodes" {
  project            = var.project_id
  name               = "${var.cluster_name}-nodes"
  region             = var.region
  base_instance_name = "${var.cluster_name}-node"
  target_size        = var.node_count

  version {
    name              = "primary"
    instance_template = google_compute_instance_template.node.self_link_unique
  }

  # Regional MIG: surge must be 0 or at least the number of zones (3 in most regions).
  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    instance_redistribution_type = "PROACTIVE"
    max_surge_fixed              = 3
    max_unavailable_fixed        = 0
    replacement_method           = "SUBSTITUTE"
  }

  # The API server must exist before nodes try to join.
  depends_on = [google_compute_instance.control_plane]
}
