//! nodewire's library: every line of behaviour of the Cloud Run functions (and what the CLI and
//! the whole-system stack reuse). Every function goes through the same stages, and the module
//! tree follows them: **arrive** (HTTP delivery → typed event; verdict → status code) →
//! **decode** (wire formats → validated types) → **observe** (read the VM, the Node and the
//! tokens, reduced to small facts) → **plan** (pure: facts + configuration → actions + next
//! step) → **act** (the only code that writes) → **publish** (the next step); **setup** is what a
//! process does once at start.
//!
//! The module map is in ARCHITECTURE.md (at the workspace root): one row per file, with its stage,
//! what it does and what it must not do.

pub mod act;
pub mod adapter;
pub mod bus;
pub mod config;
pub mod error;
pub mod event;
pub mod handlers;
pub mod join;
pub mod locate;
pub mod names;
pub mod observe;
pub mod plan;
pub mod privilege;
pub mod select;
pub mod shutdown;
pub mod startup;
pub mod sweep;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod trace;
