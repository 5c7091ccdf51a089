locals {
  # Log lines of nodewire's services (JSON: jsonPayload.message plus fields).
  service_logs = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^nodewire-\""

  sweep_interval_secs = var.sweep_interval_minutes * 60

  metric_prefix = "logging.googleapis.com/user/"
}

resource "google_logging_metric" "vms_wired" {
  project     = var.project_id
  name        = "nodewire/vms_wired"
  description = "VMs nodewire finished wiring."
  filter      = "${local.service_logs} AND jsonPayload.message=\"node wired\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }

  depends_on = [google_project_service.this]
}

resource "google_logging_metric" "time_to_wired" {
  project         = var.project_id
  name            = "nodewire/time_to_wired"
  description     = "Seconds from Node registration to wired."
  filter          = "${local.service_logs} AND jsonPayload.message=\"node wired\" AND jsonPayload.seconds_since_registration:*"
  value_extractor = "EXTRACT(jsonPayload.seconds_since_registration)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "s"
  }

  # 1 s … ~2.3 h
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 20
      growth_factor      = 1.6
      scale              = 1
    }
  }

  depends_on = [google_project_service.this]
}

resource "google_logging_metric" "dead_letters" {
  project     = var.project_id
  name        = "nodewire/dead_letters"
  description = "Messages nodewire dead-lettered, by reason."
  filter      = "${local.service_logs} AND jsonPayload.verdict=\"dead-letter\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "reason"
      value_type  = "STRING"
      description = "Why: undecodable, attempts-exhausted, retry-age-exhausted, no-publish-time or permanent."
    }
  }

  label_extractors = {
    reason = "EXTRACT(jsonPayload.reason_class)"
  }

  depends_on = [google_project_service.this]
}

resource "google_logging_metric" "drift" {
  project     = var.project_id
  name        = "nodewire/drift"
  description = "Drift found by the sweep, by kind."
  filter      = "${local.service_logs} AND jsonPayload.message=\"drift\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "kind"
      value_type  = "STRING"
      description = "Drift kind."
    }
  }

  label_extractors = {
    kind = "EXTRACT(jsonPayload.kind)"
  }

  depends_on = [google_project_service.this]
}

resource "google_logging_metric" "pod_range_exhausted" {
  project     = var.project_id
  name        = "nodewire/pod_range_exhausted"
  description = "Alias-first: a VM got no range because the pod range has no free block (its Node stays tainted)."
  filter      = "${local.service_logs} AND jsonPayload.message=\"pod range exhausted\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }

  depends_on = [google_project_service.this]
}

locals {
  dashboard_tiles = [
    { title = "VMs wired", metric = google_logging_metric.vms_wired.name, aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", group_by = [] },
    { title = "Time to wired (p95, s)", metric = google_logging_metric.time_to_wired.name, aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_95", group_by = [] },
    { title = "Dead letters by reason", metric = google_logging_metric.dead_letters.name, aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", group_by = ["metric.label.reason"] },
    { title = "Drift by kind", metric = google_logging_metric.drift.name, aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", group_by = ["metric.label.kind"] },
  ]
}

resource "google_monitoring_dashboard" "nodewire" {
  project = var.project_id
  dashboard_json = jsonencode({
    displayName = "nodewire"
    mosaicLayout = {
      columns = 48
      tiles = [for i, t in local.dashboard_tiles : {
        xPos   = (i % 2) * 24
        yPos   = floor(i / 2) * 16
        width  = 24
        height = 16
        widget = {
          title = t.title
          xyChart = {
            dataSets = [{
              plotType = "LINE"
              timeSeriesQuery = {
                timeSeriesFilter = {
                  filter = "metric.type=\"${local.metric_prefix}${t.metric}\" AND resource.type=\"cloud_run_revision\""
                  aggregation = merge({
                    alignmentPeriod    = "300s"
                    perSeriesAligner   = t.aligner
                    crossSeriesReducer = t.reducer
                  }, length(t.group_by) > 0 ? { groupByFields = t.group_by } : {})
                }
              }
            }]
          }
        }
      }]
    }
  })
}

resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "nodewire: dead letters"
  combiner              = "OR"
  notification_channels = var.notification_channels

  documentation {
    content   = "nodewire dead-lettered messages. Review them with `nodewire replay --dead-letter nodewire-dead-letter`."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "dead letters > 0 in 5 min"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_prefix}${google_logging_metric.dead_letters.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }
}

resource "google_monitoring_alert_policy" "pod_range_exhausted" {
  project               = var.project_id
  display_name          = "nodewire: pod range exhausted"
  combiner              = "OR"
  notification_channels = var.notification_channels

  documentation {
    content   = "A node VM got no pod range: the pod secondary range has no free /24 (alias-first order). Its Node keeps the nodewire.io/unwired taint and carries a CIDRNotAvailable Event. Free ranges (delete VMs) or give the range more room; the drift sweep retries."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "pod range exhausted > 0 in 5 min"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_prefix}${google_logging_metric.pod_range_exhausted.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }
}

# Each aligned window spans one sweep interval, so the condition holds only when
# every sweep in drift_alert_sweeps intervals reported drift.
resource "google_monitoring_alert_policy" "drift_not_healed" {
  project               = var.project_id
  display_name          = "nodewire: drift not healed"
  combiner              = "OR"
  notification_channels = var.notification_channels

  documentation {
    content   = "The drift sweep has reported drift for ${var.drift_alert_sweeps} sweeps in a row. See `nodewire sweep --dry-run` and `nodewire status`."
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "drift sustained for ${var.drift_alert_sweeps} sweeps"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_prefix}${google_logging_metric.drift.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "${var.drift_alert_sweeps * local.sweep_interval_secs}s"
      aggregations {
        alignment_period     = "${local.sweep_interval_secs}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }
}
