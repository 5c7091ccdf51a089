//! ACT, Kubernetes side: the drift sweep's lock and memory, one ConfigMap
//! `kube-system/nodewire-sweep`. Taking it is an update under its `resourceVersion`, so two
//! sweeps that overlap (a slow run, a manual `nodewire sweep` during a scheduled one) cannot
//! both run: the second loses the race (409) and reports that it skipped. It also remembers
//! when the sweep last published a step for each VM, so that a VM whose chain is still in
//! flight is not restarted on every run (the cooldown).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

use super::error::{Class, fail};
use super::{Kube, KubeError};

/// Name of the ConfigMap (in `kube-system`).
pub const SWEEP_STATE: &str = "nodewire-sweep";

/// VMs remembered at most; the oldest are forgotten first (a ConfigMap holds 1 MiB).
pub const MAX_REMEMBERED: usize = 5000;

/// What the sweep keeps between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepState {
    /// Who holds the lock, and until when (unix seconds); a crashed sweep's lock expires.
    pub holder: String,
    pub held_until: i64,
    /// `projects/P/zones/Z/instances/N` → unix seconds of the last step the sweep published
    /// for that VM.
    pub healed: BTreeMap<String, i64>,
    resource_version: Option<String>,
}

impl SweepState {
    fn from_config_map(cm: &ConfigMap) -> Self {
        let data = cm.data.clone().unwrap_or_default();
        let num = |k: &str| data.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let healed = data
            .get("healed")
            .and_then(|v| serde_json::from_str::<BTreeMap<String, i64>>(v).ok())
            .unwrap_or_default();
        Self {
            holder: data.get("holder").cloned().unwrap_or_default(),
            held_until: num("heldUntil"),
            healed,
            resource_version: cm.metadata.resource_version.clone(),
        }
    }

    fn to_config_map(&self) -> ConfigMap {
        // Keep the most recent entries when there are too many.
        let mut entries: Vec<(&String, &i64)> = self.healed.iter().collect();
        entries.sort_by_key(|(_, t)| std::cmp::Reverse(**t));
        entries.truncate(MAX_REMEMBERED);
        let healed: BTreeMap<&String, &i64> = entries.into_iter().collect();
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(SWEEP_STATE.to_string()),
                namespace: Some("kube-system".to_string()),
                resource_version: self.resource_version.clone(),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "nodewire".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("holder".to_string(), self.holder.clone()),
                ("heldUntil".to_string(), self.held_until.to_string()),
                (
                    "healed".to_string(),
                    serde_json::to_string(&healed).unwrap_or_else(|_| "{}".into()),
                ),
            ])),
            ..ConfigMap::default()
        }
    }

    /// True while a sweep other than `holder` holds the lock.
    pub fn held_by_another(&self, holder: &str, now: i64) -> bool {
        !self.holder.is_empty() && self.holder != holder && self.held_until > now
    }
}

impl Kube {
    fn sweep_states(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), "kube-system")
    }

    /// Takes the sweep lock for `hold`: `Ok(Some(state))` once taken, `Ok(None)` when another
    /// sweep holds it (or took it first, a lost race).
    ///
    /// # Errors
    /// [`KubeError`] when the ConfigMap cannot be read or written.
    pub async fn acquire_sweep(
        &self,
        holder: &str,
        now: i64,
        hold: Duration,
    ) -> Result<Option<SweepState>, KubeError> {
        const GET: &str = "configmaps.get";
        const WRITE: &str = "configmaps.update";
        let api = self.sweep_states();
        let current = match self.retrying(GET, || api.get(SWEEP_STATE)).await {
            Ok(cm) => Some(SweepState::from_config_map(&cm)),
            Err(Class::Fail(KubeError::NotFound { .. })) => None,
            Err(c) => return Err(fail(GET, c)),
        };
        if current
            .as_ref()
            .is_some_and(|s| s.held_by_another(holder, now))
        {
            return Ok(None);
        }
        let mut state = current.clone().unwrap_or_default();
        state.holder = holder.to_string();
        state.held_until = now.saturating_add(i64::try_from(hold.as_secs()).unwrap_or(i64::MAX));
        let cm = state.to_config_map();
        let pp = PostParams::default();
        let written = if current.is_some() {
            self.retrying(WRITE, || api.replace(SWEEP_STATE, &pp, &cm))
                .await
        } else {
            self.retrying(WRITE, || api.create(&pp, &cm)).await
        };
        match written {
            Ok(cm) => Ok(Some(SweepState::from_config_map(&cm))),
            // Another sweep wrote first (409 on update, 409 AlreadyExists on create).
            Err(Class::Conflict) => Ok(None),
            Err(Class::Fail(KubeError::Refused { code: 409, .. })) => Ok(None),
            Err(c) => Err(fail(WRITE, c)),
        }
    }

    /// Releases the lock and stores what the sweep remembers.
    ///
    /// # Errors
    /// [`KubeError`] when the write fails (the lock then expires by itself).
    pub async fn release_sweep(&self, mut state: SweepState) -> Result<(), KubeError> {
        const WRITE: &str = "configmaps.update";
        state.holder.clear();
        state.held_until = 0;
        let cm = state.to_config_map();
        let api = self.sweep_states();
        let pp = PostParams::default();
        self.retrying(WRITE, || api.replace(SWEEP_STATE, &pp, &cm))
            .await
            .map(|_| ())
            .map_err(|c| fail(WRITE, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounded_memory() {
        let mut s = SweepState {
            holder: "run-1".into(),
            held_until: 100,
            ..SweepState::default()
        };
        for i in 0..(MAX_REMEMBERED + 10) {
            s.healed.insert(format!("p/z/vm-{i}"), i as i64);
        }
        let back = SweepState::from_config_map(&s.to_config_map());
        assert_eq!(back.holder, "run-1");
        assert_eq!(back.held_until, 100);
        assert_eq!(back.healed.len(), MAX_REMEMBERED);
        assert!(
            !back.healed.contains_key("p/z/vm-0"),
            "the oldest are forgotten"
        );
        assert!(back.held_by_another("run-2", 50));
        assert!(
            !back.held_by_another("run-2", 100),
            "an expired lock is free"
        );
        assert!(!back.held_by_another("run-1", 50));
    }
}
