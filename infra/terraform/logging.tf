locals {
  # Admin Activity entries of VM creation and deletion (the final entry of each operation).
  gce_audit_methods = [
    "v1.compute.instances.insert",
    "beta.compute.instances.insert",
    "compute.instances.insert",
    "v1.compute.instances.bulkInsert",
    "beta.compute.instances.bulkInsert",
    "compute.instances.bulkInsert",
    "v1.compute.instances.delete",
    "beta.compute.instances.delete",
    "compute.instances.delete",
  ]

  gce_audit_filter = join(" AND ", [
    "logName=\"projects/${var.project_id}/logs/cloudaudit.googleapis.com%2Factivity\"",
    "protoPayload.serviceName=\"compute.googleapis.com\"",
    "resource.type=\"gce_instance\"",
    "protoPayload.methodName=(${join(" OR ", [for m in local.gce_audit_methods : "\"${m}\""])})",
    "operation.last=true",
  ])

  # Node events of the kube-apiserver audit log shipped by the control plane's Ops Agent, and
  # CSR creates (metadata mode: node-events decides kubelet CSRs made with bootstrap tokens);
  # the jsonPayload.message terms catch lines the agent could not parse as JSON.
  k8s_audit_filter = join(" AND ", [
    "logName=\"projects/${var.project_id}/logs/${local.k8s_audit_log_id}\"",
    "resource.type=\"gce_instance\"",
    # Only the control plane's entries (any project log writer could write this log name; the
    # functions re-read everything they act on, so a forged entry costs only a read).
    "resource.labels.instance_id=\"${google_compute_instance.control_plane.instance_id}\"",
    "(jsonPayload.objectRef.resource=\"nodes\" OR jsonPayload.objectRef.resource=\"certificatesigningrequests\" OR jsonPayload.message:\"\\\"resource\\\":\\\"nodes\\\"\" OR jsonPayload.message:\"\\\"resource\\\":\\\"certificatesigningrequests\\\"\")",
  ])
}

resource "google_logging_project_sink" "gce_audit" {
  project                = var.project_id
  name                   = "nodewire-gce-audit"
  description            = "Compute instance insert/bulkInsert/delete (Admin Activity) to nodewire."
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic[local.gce_audit_topic].id}"
  filter                 = local.gce_audit_filter
  unique_writer_identity = true
}

resource "google_logging_project_sink" "k8s_audit" {
  project                = var.project_id
  name                   = "nodewire-k8s-audit"
  description            = "kube-apiserver audit entries about Nodes and CSR creates to nodewire."
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic[local.k8s_audit_topic].id}"
  filter                 = local.k8s_audit_filter
  unique_writer_identity = true
}

resource "google_pubsub_topic_iam_member" "gce_audit_sink" {
  project = var.project_id
  topic   = google_pubsub_topic.topic[local.gce_audit_topic].name
  role    = "roles/pubsub.publisher"
  member  = google_logging_project_sink.gce_audit.writer_identity
}

resource "google_pubsub_topic_iam_member" "k8s_audit_sink" {
  project = var.project_id
  topic   = google_pubsub_topic.topic[local.k8s_audit_topic].name
  role    = "roles/pubsub.publisher"
  member  = google_logging_project_sink.k8s_audit.writer_identity
}
