variable "project_id" {
  description = "Project of the cluster, its VMs and every nodewire resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be 6-30 characters: lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen."
  }
}

variable "region" {
  description = "Region of the subnets, the node pool, the Cloud Run services and the artifact repository."
  type        = string
  default     = "asia-southeast1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must look like asia-southeast1."
  }
}

variable "zone" {
  description = "Zone of the control-plane VM; must be in var.region."
  type        = string
  default     = "asia-southeast1-a"

  validation {
    condition     = startswith(var.zone, "${var.region}-") && can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.zone))
    error_message = "zone must be a zone of var.region, e.g. asia-southeast1-a."
  }
}

variable "cluster_name" {
  description = "Cluster name: prefix of VM names (NAME-cp-0, NAME-node-*), service accounts and network resources."
  type        = string
  default     = "k8s"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 3-20 characters: lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes version (x.y.z) installed by the startup scripts and used by kubeadm."
  type        = string
  default     = "1.33.5"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must be x.y.z, e.g. 1.33.5."
  }
}

variable "control_plane_machine_type" {
  description = "Machine type of the control-plane VM."
  type        = string
  default     = "e2-standard-2"

  validation {
    condition     = can(regex("^[a-z0-9]+-[a-z0-9-]+$", var.control_plane_machine_type))
    error_message = "control_plane_machine_type must be a machine type name, e.g. e2-standard-2."
  }
}

variable "node_machine_type" {
  description = "Machine type of the node VMs (instance template)."
  type        = string
  default     = "e2-standard-2"

  validation {
    condition     = can(regex("^[a-z0-9]+-[a-z0-9-]+$", var.node_machine_type))
    error_message = "node_machine_type must be a machine type name, e.g. e2-standard-2."
  }
}

variable "node_count" {
  description = "Target size of the node instance group. Each node, and the control plane, takes one /24 of the pod range."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count >= 0 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number >= 0."
  }

  validation {
    condition     = try(var.node_count + 1 <= pow(2, 24 - tonumber(split("/", var.pod_range_cidr)[1])) + sum(concat([0], [for r in var.additional_pod_ranges : pow(2, 24 - tonumber(split("/", r.cidr)[1]))])), false)
    error_message = "node_count + 1 (the control plane) /24 podCIDRs must fit into pod_range_cidr and additional_pod_ranges."
  }
}

variable "node_labels" {
  description = "GCE labels of the node VMs, and nodewire's selector (NODEWIRE_SELECTOR_LABELS). null means { nodewire = \"managed\", cluster = var.cluster_name }."
  type        = map(string)
  default     = null

  validation {
    condition = alltrue([
      for k, v in(var.node_labels == null ? {} : var.node_labels) :
      can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "node_labels must follow GCE label syntax: keys [a-z][a-z0-9_-]{0,62}, values [a-z0-9_-]{0,63}."
  }
}

variable "node_tags" {
  description = "Network tags nodewire adds to every node VM (NODEWIRE_NODE_TAGS); node firewall rules target them."
  type        = list(string)
  default     = ["k8s-node"]

  validation {
    condition     = length(var.node_tags) > 0 && alltrue([for t in var.node_tags : can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", t))])
    error_message = "node_tags must be a non-empty list of network tags (lowercase letters, digits, hyphens; at most 63 characters)."
  }
}

variable "node_subnet_cidr" {
  description = "Primary range of the node subnet (control plane and nodes)."
  type        = string
  default     = "10.122.16.0/21"

  validation {
    condition     = can(cidrhost(var.node_subnet_cidr, 0))
    error_message = "node_subnet_cidr must be an IPv4 CIDR."
  }

  validation {
    condition     = try(cidrhost(var.node_subnet_cidr, 0) == split("/", var.node_subnet_cidr)[0], false)
    error_message = "node_subnet_cidr must be a network address (no host bits set)."
  }
}

variable "pod_range_cidr" {
  description = "Secondary range \"pods\" of the node subnet; the cluster's pod CIDR (NODEWIRE_POD_RANGE)."
  type        = string
  default     = "192.168.16.0/21"

  validation {
    condition     = can(cidrhost(var.pod_range_cidr, 0))
    error_message = "pod_range_cidr must be an IPv4 CIDR."
  }

  validation {
    condition     = try(cidrhost(var.pod_range_cidr, 0) == split("/", var.pod_range_cidr)[0] && tonumber(split("/", var.pod_range_cidr)[1]) <= 24, false)
    error_message = "pod_range_cidr must be a network address with a prefix of /24 or shorter."
  }
}

variable "additional_pod_ranges" {
  description = "More secondary ranges of the node subnet for Pods, as GKE's additional pod ranges: nodewire allocates a node's /24 from the first range with room (pod_range_cidr first, then these in order). NODEWIRE_ADDITIONAL_POD_RANGES; needs range_order = \"alias-first\" (kube-controller-manager allocates from one range only). Firewall, ip-masq-agent and kube-proxy cover them. Adding one to a running cluster is safe; removing one that Nodes use is not."
  type = list(object({
    name = string
    cidr = string
  }))
  default = []

  validation {
    condition     = length(var.additional_pod_ranges) <= 29
    error_message = "At most 29 additional pod ranges (nodewire takes 30 pod ranges in all)."
  }

  validation {
    condition     = alltrue([for r in var.additional_pod_ranges : can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", r.name)) && !contains(["pods", "services"], r.name)])
    error_message = "Each additional pod range needs a range name ([a-z]([-a-z0-9]{0,61}[a-z0-9])?) other than \"pods\" and \"services\"."
  }

  validation {
    condition     = length(distinct([for r in var.additional_pod_ranges : r.name])) == length(var.additional_pod_ranges)
    error_message = "The additional pod ranges' names must be distinct."
  }

  validation {
    condition     = alltrue([for r in var.additional_pod_ranges : try(cidrhost(r.cidr, 0) == split("/", r.cidr)[0] && tonumber(split("/", r.cidr)[1]) <= 24, false)])
    error_message = "Each additional pod range must be an IPv4 network address with a prefix of /24 or shorter."
  }

  validation {
    condition     = length(var.additional_pod_ranges) == 0 || var.range_order == "alias-first"
    error_message = "additional_pod_ranges needs range_order = \"alias-first\": in the cluster-first order kube-controller-manager allocates podCIDRs from pod_range_cidr only."
  }
}

variable "service_range_cidr" {
  description = "Secondary range \"services\" of the node subnet; the cluster's service CIDR."
  type        = string
  default     = "172.16.16.0/21"

  validation {
    condition     = can(cidrhost(var.service_range_cidr, 0))
    error_message = "service_range_cidr must be an IPv4 CIDR."
  }

  validation {
    condition     = try(cidrhost(var.service_range_cidr, 0) == split("/", var.service_range_cidr)[0], false)
    error_message = "service_range_cidr must be a network address (no host bits set)."
  }
}

variable "run_subnet_cidr" {
  description = "Subnet of Cloud Run Direct VPC egress (at least a /26)."
  type        = string
  default     = "10.122.24.0/26"

  validation {
    condition     = can(cidrhost(var.run_subnet_cidr, 0))
    error_message = "run_subnet_cidr must be an IPv4 CIDR."
  }

  validation {
    condition     = try(cidrhost(var.run_subnet_cidr, 0) == split("/", var.run_subnet_cidr)[0] && tonumber(split("/", var.run_subnet_cidr)[1]) <= 26, false)
    error_message = "run_subnet_cidr must be a network address with a prefix of /26 or shorter (Direct VPC egress)."
  }
}

variable "images" {
  description = "Container image per function, by digest, e.g. { \"bootstrap\" = \"asia-southeast1-docker.pkg.dev/P/nodewire/bootstrap@sha256:...\" }. A service is created only once its image is here (phase 1: {})."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.images : contains(keys(local.functions), k) && strcontains(v, "@sha256:")])
    error_message = "images keys must be function names (instance-events, node-events, bootstrap, assign-alias, tag-instance, provider-id, finalize, release-alias, decommission, drift-sweep) and values image references by digest (…@sha256:…)."
  }
}

variable "push_auth_mode" {
  description = "NODEWIRE_PUSH_AUTH: \"cloud-run-iam\" (Cloud Run's invoker check verifies the token) or \"oidc\" (invoker check disabled, the container verifies the signature)."
  type        = string
  default     = "cloud-run-iam"

  validation {
    condition     = contains(["cloud-run-iam", "oidc"], var.push_auth_mode)
    error_message = "push_auth_mode must be \"cloud-run-iam\" or \"oidc\"."
  }
}

variable "join_mode" {
  description = "NODEWIRE_JOIN_MODE and the nodes' nodewire-join-mode: \"pull\" (a node asks the join service for its JoinConfiguration with its instance identity token; nothing secret in metadata) or \"metadata\" (bootstrap writes it into the VM's metadata, finalize clears it)."
  type        = string
  default     = "pull"

  validation {
    condition     = contains(["pull", "metadata"], var.join_mode)
    error_message = "join_mode must be \"pull\" or \"metadata\"."
  }
}

variable "range_order" {
  description = "NODEWIRE_RANGE_ORDER: \"alias-first\" (the default: nodewire has Compute Engine allocate the VM's /24 while it boots and copies it into the Node's podCIDR; kube-controller-manager runs with --allocate-node-cidrs=false; Node registered to untainted 0.1 s) or \"cluster-first\" (kube-controller-manager assigns each Node's podCIDR, nodewire then gives the VM that alias range; about 13 s). A running control plane follows a change within 5 minutes (nodewire-reconcile.timer); existing Nodes keep their ranges. Deployments created before alias-first became the default and that want to stay cluster-first set it explicitly."
  type        = string
  default     = "alias-first"

  validation {
    condition     = contains(["cluster-first", "alias-first"], var.range_order)
    error_message = "range_order must be \"cluster-first\" or \"alias-first\"."
  }
}

variable "request_timeout_secs" {
  description = "NODEWIRE_REQUEST_TIMEOUT_SECS: deadline of one delivery inside the service; below cloud_run_timeout_secs."
  type        = number
  default     = 100

  # Being below cloud_run_timeout_secs is checked there (two-way checks would form a cycle).
  validation {
    condition     = var.request_timeout_secs > 0 && var.request_timeout_secs <= 600
    error_message = "request_timeout_secs must be above 0 and at most 600."
  }
}

variable "cloud_run_timeout_secs" {
  description = "Cloud Run request timeout in seconds; above request_timeout_secs, at most 600."
  type        = number
  default     = 120

  validation {
    condition     = floor(var.cloud_run_timeout_secs) == var.cloud_run_timeout_secs && var.cloud_run_timeout_secs > var.request_timeout_secs && var.cloud_run_timeout_secs <= 600
    error_message = "cloud_run_timeout_secs must be a whole number above request_timeout_secs and at most 600."
  }
}

variable "ack_deadline_secs" {
  description = "Ack deadline of the push subscriptions; at least cloud_run_timeout_secs, at most 600."
  type        = number
  default     = 120

  validation {
    condition     = floor(var.ack_deadline_secs) == var.ack_deadline_secs && var.ack_deadline_secs >= var.cloud_run_timeout_secs && var.ack_deadline_secs <= 600
    error_message = "ack_deadline_secs must be a whole number between cloud_run_timeout_secs and 600."
  }
}

variable "sweep_interval_minutes" {
  description = "Minutes between drift sweeps (Cloud Scheduler runs \"*/N * * * *\", UTC); the drift alert counts sweeps of this length."
  type        = number
  default     = 10

  validation {
    condition     = var.sweep_interval_minutes >= 1 && var.sweep_interval_minutes <= 59 && floor(var.sweep_interval_minutes) == var.sweep_interval_minutes
    error_message = "sweep_interval_minutes must be a whole number from 1 to 59."
  }
}

variable "max_instances" {
  description = "Maximum instances of each Cloud Run service."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number from 1 to 1000."
  }
}

variable "notification_channels" {
  description = "Monitoring notification channel ids (projects/P/notificationChannels/N) of the alert policies."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "notification_channels must be ids like projects/P/notificationChannels/N."
  }
}

variable "drift_alert_sweeps" {
  description = "The drift alert fires when drift is reported in this many consecutive sweep intervals."
  type        = number
  default     = 3

  validation {
    condition     = var.drift_alert_sweeps >= 1 && var.drift_alert_sweeps <= 24 && floor(var.drift_alert_sweeps) == var.drift_alert_sweeps
    error_message = "drift_alert_sweeps must be a whole number from 1 to 24."
  }
}

variable "peered_ranges" {
  description = "CIDRs reached over VPC peering or VPN whose traffic keeps the Pod's own address (ip-masq-agent's nonMasqueradeCIDRs, beside the node subnet, pod and service ranges)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.peered_ranges : can(cidrhost(c, 0))]) && length(var.peered_ranges) <= 60
    error_message = "peered_ranges must be at most 60 IPv4 CIDRs."
  }
}
