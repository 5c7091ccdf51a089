//! Simulators of the two APIs nodewire cannot reach from here: Compute Engine ([`compute`]) and
//! the Kubernetes API server ([`k8s`]). Both speak the real REST wire formats on 127.0.0.1 so
//! the production clients run against them unchanged, and both refuse what the real APIs
//! refuse — a simulator that accepts anything proves nothing. They are the substrate of the
//! contract tests, the end-to-end tests and the local sandbox.
//!
//! Both run on one shared HTTP front with fault injection and a request log (`server`, with
//! [`faults`]) and one block allocator (`blocks`). Around them: the simulated Logging sinks
//! ([`audit`]), the simulated VM agent ([`agent`]), the Pub/Sub emulator launcher
//! ([`emulator`]) and the whole system on one machine ([`stack`]).

pub mod agent;
pub mod audit;
mod blocks;
pub mod compute;
pub mod emulator;
pub mod faults;
pub mod k8s;
pub mod kubelet_cert;
pub mod metadata;
mod server;
pub mod stack;
pub mod tls;
