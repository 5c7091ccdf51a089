//! DECODE: wire formats → typed events. Serde types and pure interpretation; no I/O.
//!
//! - [`instance`]: Compute Engine audit LogEntry → [`InstanceEvent`]
//! - [`node`]: Kubernetes audit (Ops Agent, GKE, bare Event, EventList) → [`NodeEvents`]
//! - [`step`]: nodewire's own step messages, schema `nodewire.step/v1`
//! - [`logentry`]: the Cloud Logging LogEntry subset the others share

pub mod instance;
pub mod logentry;
pub mod node;
pub mod step;

#[cfg(test)]
mod props;

pub use instance::{InstanceChange, InstanceEvent};
pub use node::{NodeChange, NodeEvent, NodeEvents};
pub use step::{Cause, CauseSource, STEP_SCHEMA, Step, StepMessage};

use crate::names::NameError;

/// A payload nodewire can never act on. Always permanent: redelivering it cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON, or JSON of the wrong types.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Valid JSON, but not the shape we expect (a required field missing, inconsistent ids).
    #[error("unexpected shape: {0}")]
    Shape(String),
    /// An identifier (name, zone, project, CIDR) that does not validate.
    #[error("{0}")]
    Invalid(#[from] NameError),
    /// A step message of a schema version this build does not read.
    #[error("{0}")]
    Schema(String),
}

/// A message payload that can be decoded from the bytes of a Pub/Sub message's `data`
/// (or an Eventarc CloudEvent's data).
pub trait Decode: Sized {
    /// # Errors
    /// [`DecodeError`] when the payload is not one we can ever act on.
    fn decode(data: &[u8]) -> Result<Self, DecodeError>;
}

/// Raw bytes, for functions that look at the payload themselves.
impl Decode for bytes::Bytes {
    fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes::Bytes::copy_from_slice(data))
    }
}

/// Parses JSON into `T`, with an error that names what was expected and stays short.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    data: &[u8],
    what: &str,
) -> Result<T, DecodeError> {
    serde_json::from_slice(data).map_err(|e| {
        let msg = crate::text::shorten(&e.to_string(), crate::text::ERROR_MAX);
        DecodeError::Json(format!("{what}: {msg}"))
    })
}
