//! ACT (and OBSERVE): every call to Compute Engine and Kubernetes lives here, behind clients
//! that reduce the APIs' objects to small views and own the retry and conflict rules.

pub mod compute;
pub mod k8s;
