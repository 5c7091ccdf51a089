# The reference set-up. Phase 1: images = {}; phase 2 (Cloud Build's deploy) passes digests:
# images = {
#   "bootstrap" = "asia-southeast1-docker.pkg.dev/example-project/nodewire/bootstrap@sha256:..."
#   ...
# }

project_id   = "example-project"
region       = "asia-southeast1"
zone         = "asia-southeast1-a"
cluster_name = "k8s"

kubernetes_version = "1.33.5"

node_subnet_cidr   = "10.122.16.0/21"
pod_range_cidr     = "192.168.16.0/21"
service_range_cidr = "172.16.16.0/21"
run_subnet_cidr    = "10.122.24.0/26"

node_count = 3
node_tags  = ["k8s-node"]

push_auth_mode = "cloud-run-iam"

# pull (default): nodes fetch their JoinConfiguration from the join service with their instance
# identity token; metadata: nodewire writes it into the VM's metadata (the mode before issue 12).
join_mode = "pull"

images = {}
