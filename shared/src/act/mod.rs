//! ACT (and OBSERVE): every call to Compute Engine and Kubernetes lives here, behind clients
//! that reduce the APIs' objects to small views and own the retry and conflict rules
//! ([`compute`], [`k8s`], their shared [`toolkit`]); the clients built once per process
//! ([`deps`]); and [`execute`], which carries out the planner's actions with them. Nothing here
//! decides: the planner does.

pub mod compute;
pub mod deps;
pub mod execute;
pub mod full_ranges;
pub mod k8s;
pub mod toolkit;
