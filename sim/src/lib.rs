//! Simulators of the two APIs nodewire cannot reach from here: Compute Engine ([`compute`]) and
//! the Kubernetes API server ([`k8s`]). Both speak the real REST wire formats on 127.0.0.1 so
//! the production clients run against them unchanged, and both refuse what the real APIs
//! refuse — a simulator that accepts anything proves nothing. They are the substrate of the
//! contract tests, the end-to-end tests and the local sandbox.

pub mod agent;
pub mod audit;
mod blocks;
pub mod compute;
pub mod emulator;
pub mod faults;
pub mod k8s;
mod server;
pub mod stack;
