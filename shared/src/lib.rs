//! nodewire's common library. Every function follows the same five steps, and the module tree
//! follows them too:
//!
//! 1. **arrive** ([`adapter`]): HTTP + Pub/Sub push envelope / CloudEvent → typed event;
//!    verdict → status code (ack, retry, dead-letter).
//! 2. **decode** ([`event`], [`names`]): wire formats → validated types.
//! 3. **observe** ([`locate`], and the Compute/Kubernetes clients as they arrive): read state.
//! 4. **plan / act**: decide in pure code, then write.
//! 5. **publish** ([`bus`], [`deps`]): the next step, with trace context and ordering key.
//!
//! [`handlers`] holds the functions' handlers; [`config`], [`telemetry`], [`shutdown`] and
//! [`trace`] are process setup. (The Pub/Sub emulator launcher used by the tests and the
//! sandbox lives in the `sim` crate: nothing a Cloud Run binary links.)

pub mod act;
pub mod adapter;
pub mod bus;
pub mod config;
pub mod deps;
pub mod error;
pub mod event;
pub mod handlers;
pub mod join;
pub mod locate;
pub mod names;
pub mod observe;
pub mod plan;
pub mod select;
pub mod shutdown;
pub mod startup;
pub mod sweep;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod trace;
