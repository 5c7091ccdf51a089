locals {
  drift_sweep_enabled = contains(keys(var.images), "drift-sweep")
}

# Cloud Scheduler's service agent mints the drift-sweep identity's ID tokens.
resource "google_service_account_iam_member" "scheduler_agent_token_creator" {
  service_account_id = google_service_account.push["drift-sweep"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-cloudscheduler.iam.gserviceaccount.com"

  depends_on = [google_project_service.this]
}

resource "google_cloud_scheduler_job" "drift_sweep" {
  count = local.drift_sweep_enabled ? 1 : 0

  project          = var.project_id
  region           = var.region
  name             = "nodewire-drift-sweep"
  description      = "Runs nodewire's drift sweep."
  schedule         = "*/${var.sweep_interval_minutes} * * * *"
  time_zone        = "Etc/UTC"
  attempt_deadline = "320s"

  # A missed sweep is not retried: the next run comes soon anyway.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = local.service_url["drift-sweep"]
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }

    oidc_token {
      service_account_email = google_service_account.push["drift-sweep"].email
      audience              = local.service_url["drift-sweep"]
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.push_invoker]
}
