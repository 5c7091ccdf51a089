//! The one question every error answers: may trying again succeed? The adapter turns the
//! answer into ack or retry (see `adapter::verdict`); the clients use it to decide their own
//! bounded retries. Never decided by matching message strings.

/// How an error is classified. Implemented by every error type that crosses a step boundary.
pub trait Classify {
    /// True when redelivering the same message may succeed (429, 5xx, timeouts, a state
    /// not reached yet). False when it never will (bad input, a refused change).
    fn is_retryable(&self) -> bool;
}
