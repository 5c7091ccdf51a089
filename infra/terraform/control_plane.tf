resource "google_compute_address" "control_plane" {
  project      = var.project_id
  name         = "${var.cluster_name}-cp-0"
  region       = var.region
  address_type = "INTERNAL"
  subnetwork   = google_compute_subnetwork.nodes.id
  description  = "Kubernetes API server endpoint (kubeadm advertise address)."
}

resource "google_service_account" "control_plane" {
  project      = var.project_id
  account_id   = "${var.cluster_name}-cp"
  display_name = "${var.cluster_name} control plane"

  depends_on = [google_project_service.this]
}

resource "google_project_iam_member" "control_plane" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])

  project = var.project_id
  role    = each.value
  member  = google_service_account.control_plane.member
}

# Lets the control plane's script give its own nic0 the alias range of its podCIDR.
resource "google_project_iam_custom_role" "control_plane_self" {
  project     = var.project_id
  role_id     = "${replace(var.cluster_name, "-", "_")}_cp_self_alias"
  title       = "${var.cluster_name} control plane: own alias range"
  description = "Granted on the control-plane instance only."
  permissions = [
    "compute.instances.get",
    "compute.instances.updateNetworkInterface",
  ]
}

# Zone operations are not children of the instance: waiting for its own alias operation needs
# this read at project level.
resource "google_project_iam_custom_role" "control_plane_operations" {
  project     = var.project_id
  role_id     = "${replace(var.cluster_name, "-", "_")}_cp_operations"
  title       = "${var.cluster_name} control plane: read zone operations"
  description = "Lets the control plane wait for its own alias-range operation."
  permissions = ["compute.zoneOperations.get"]
}

resource "google_project_iam_member" "control_plane_operations" {
  project = var.project_id
  role    = google_project_iam_custom_role.control_plane_operations.id
  member  = google_service_account.control_plane.member
}

# Adding an alias range from the subnet's pods range uses the subnet.
resource "google_compute_subnetwork_iam_member" "control_plane_use" {
  project    = var.project_id
  region     = var.region
  subnetwork = google_compute_subnetwork.nodes.name
  role       = "roles/compute.networkUser"
  member     = google_service_account.control_plane.member
}

resource "google_compute_instance_iam_member" "control_plane_self" {
  project       = var.project_id
  zone          = var.zone
  instance_name = google_compute_instance.control_plane.name
  role          = google_project_iam_custom_role.control_plane_self.id
  member        = google_service_account.control_plane.member
}

resource "google_compute_instance" "control_plane" {
  # checkov:skip=CKV_GCP_36: nodes route pod traffic (alias range = podCIDR); nodewire bootstrap refuses VMs without canIpForward.
  # checkov:skip=CKV_GCP_38: boot disk uses Google-managed encryption; no CSEK key management in this set-up.
  project        = var.project_id
  name           = "${var.cluster_name}-cp-0"
  zone           = var.zone
  machine_type   = var.control_plane_machine_type
  can_ip_forward = true
  tags           = [local.control_plane_tag]
  labels = {
    cluster = var.cluster_name
    role    = "control-plane"
  }

  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = "debian-cloud/debian-12"
      size  = 30
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.nodes.id
    network_ip = google_compute_address.control_plane.address
  }

  service_account {
    email  = google_service_account.control_plane.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    # One file per VM: the shared functions, then the script (infra/startup/common.sh says so).
    startup-script         = join("\n", [file("${path.module}/../startup/common.sh"), file("${path.module}/../startup/control-plane.sh")])
    block-project-ssh-keys = "true"
    enable-oslogin         = "TRUE"
    nodewire-cluster-config = jsonencode({
      pod_range          = var.pod_range_cidr
      pod_range_name     = "pods"
      service_range      = var.service_range_cidr
      cluster_name       = var.cluster_name
      kubernetes_version = var.kubernetes_version
      advertise_address  = google_compute_address.control_plane.address
      audit_log_name     = local.k8s_audit_log_id
      kube_token_secret  = google_secret_manager_secret.kube_token.secret_id
      kube_ca_secret     = google_secret_manager_secret.kube_ca.secret_id
      # The join service's own token; in pull mode the script deletes kubeadm's auto-approval
      # of node certificates for bootstrap tokens.
      kube_join_token_secret = google_secret_manager_secret.kube_join_token.secret_id
      join_mode              = var.join_mode
      range_order            = var.range_order
      # ip-masq-agent leaves traffic to these unmasqueraded (infra/k8s/ip-masq-agent.yaml).
      non_masquerade_cidrs = join(",", concat([var.node_subnet_cidr], local.pod_range_cidrs, [var.service_range_cidr], var.peered_ranges))
    })
    nodewire-k8s-rbac = file("${path.module}/../k8s/nodewire-rbac.yaml")
    # Applied in metadata mode (node-events decides bootstrap-token CSRs), deleted in pull mode.
    nodewire-k8s-rbac-metadata-mode = file("${path.module}/../k8s/nodewire-rbac-metadata-mode.yaml")
    # The admission policies bind nodewire's writes to this project, the node VMs' name prefix
    # and the join token TTL: the same values the functions are configured with.
    nodewire-k8s-policy = templatefile("${path.module}/../k8s/nodewire-admission-policy.yaml", {
      project         = var.project_id
      instance_prefix = local.env_common.NODEWIRE_INSTANCE_PREFIX
      token_ttl_secs  = local.env_chain.NODEWIRE_TOKEN_TTL_SECS
      range_order     = var.range_order
    })
    nodewire-k8s-ip-masq  = file("${path.module}/../k8s/ip-masq-agent.yaml")
    nodewire-audit-policy = file("${path.module}/../k8s/node/audit-policy.yaml")
  }

  # The startup script stores the kube token and CA at once; its own alias grant
  # (instance-level, above) can only follow the VM, so the script retries that.
  depends_on = [
    google_project_iam_member.control_plane,
    google_secret_manager_secret_iam_member.control_plane_version_adder,
    google_secret_manager_secret_iam_member.control_plane_reader,
  ]
}
