//! DECIDE "ours": the one definition of which VMs and Nodes nodewire manages. Pure.
//!
//! A VM is nodewire's when it is in the configured project, its name starts with the
//! configured prefix (`NODEWIRE_INSTANCE_PREFIX`) and it carries every selector label
//! (`NODEWIRE_SELECTOR_LABELS`). A Node is judged by the VM it runs on (its name is the VM's
//! name). The routers, every step, the planner, the drift sweep and the CLI ask this type and
//! nothing else.
//!
//! What can be checked depends on what is known: an audit entry names the VM but carries no
//! labels, so [`Selector::admits`] checks project and prefix; once the VM has been read,
//! [`Selector::admits_vm`] checks the labels too. The node subnet is not part of "ours": a VM
//! that is ours but on another subnet is refused loudly (a misconfiguration to fix), not
//! ignored — see `plan::Refusal::WrongSubnet`.

use std::collections::BTreeMap;

use crate::names::InstanceRef;

/// Why a VM or Node is not nodewire's (acknowledged and ignored, never acted on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotOurs(pub String);

/// Which VMs (and so which Nodes) are nodewire's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// The cluster's project (`NODEWIRE_PROJECT`).
    pub project: String,
    /// Only VMs whose name starts with this (`NODEWIRE_INSTANCE_PREFIX`).
    pub name_prefix: Option<String>,
    /// Only VMs with all these labels (`NODEWIRE_SELECTOR_LABELS`; empty: no condition).
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// A selector of every VM of `project`.
    pub fn project(project: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            ..Self::default()
        }
    }

    /// What can be checked from a name alone: the project and the name prefix.
    ///
    /// # Errors
    /// [`NotOurs`] saying which condition failed.
    pub fn admits(&self, vm: &InstanceRef) -> Result<(), NotOurs> {
        if vm.project() != self.project {
            return Err(NotOurs(format!(
                "VM {vm} is in project {}, not the configured {}",
                vm.project(),
                self.project
            )));
        }
        self.admits_name(vm.name()).map_err(|_| {
            NotOurs(format!(
                "VM {vm} does not match the name prefix {:?}",
                self.prefix()
            ))
        })
    }

    /// The name prefix alone, for a Node (named like its VM) before its VM is known.
    ///
    /// # Errors
    /// [`NotOurs`] when the name lacks the prefix.
    pub fn admits_name(&self, name: &str) -> Result<(), NotOurs> {
        match &self.name_prefix {
            Some(p) if !name.starts_with(p.as_str()) => Err(NotOurs(format!(
                "{name} does not match the name prefix {p:?}"
            ))),
            _ => Ok(()),
        }
    }

    /// Everything: project, prefix and labels of a VM that has been read.
    ///
    /// # Errors
    /// [`NotOurs`] saying which condition failed.
    pub fn admits_vm(
        &self,
        vm: &InstanceRef,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), NotOurs> {
        self.admits(vm)?;
        for (k, v) in &self.labels {
            if labels.get(k) != Some(v) {
                return Err(NotOurs(format!("VM {vm} lacks the selector label {k}={v}")));
            }
        }
        Ok(())
    }

    fn prefix(&self) -> &str {
        self.name_prefix.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel() -> Selector {
        Selector {
            project: "example-project".into(),
            name_prefix: Some("k8s-".into()),
            labels: BTreeMap::from([("cluster".into(), "demo".into())]),
        }
    }

    fn vm(project: &str, name: &str) -> InstanceRef {
        InstanceRef::new(project, "us-central1-a", name).expect("valid")
    }

    #[test]
    fn admits_by_project_prefix_and_labels() {
        let s = sel();
        let labels = BTreeMap::from([("cluster".to_string(), "demo".to_string())]);
        assert_eq!(
            s.admits_vm(&vm("example-project", "k8s-1"), &labels),
            Ok(())
        );
        let e = s
            .admits(&vm("other-project", "k8s-1"))
            .expect_err("project");
        assert!(e.0.contains("other-project"), "{e}");
        let e = s
            .admits(&vm("example-project", "web-1"))
            .expect_err("prefix");
        assert!(e.0.contains("name prefix \"k8s-\""), "{e}");
        let e = s
            .admits_vm(&vm("example-project", "k8s-1"), &BTreeMap::new())
            .expect_err("labels");
        assert!(e.0.contains("lacks the selector label cluster=demo"), "{e}");
        assert!(s.admits_name("web-1").is_err());
        assert!(s.admits_name("k8s-1").is_ok());
        let open = Selector::project("example-project");
        assert_eq!(
            open.admits_vm(&vm("example-project", "web-1"), &BTreeMap::new()),
            Ok(())
        );
    }
}
