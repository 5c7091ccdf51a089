//! The one question every error answers: may trying again succeed? The adapter turns the
//! answer into ack or retry (see `adapter::verdict`); the clients use it to decide their own
//! bounded retries. Never decided by matching message strings. [`Cause`] keeps the error that
//! caused another as its source instead of flattening it into a string.

/// How an error is classified. Implemented by every error type that crosses a step boundary.
pub trait Classify {
    /// True when redelivering the same message may succeed (429, 5xx, timeouts, a state
    /// not reached yet). False when it never will (bad input, a refused change).
    fn is_retryable(&self) -> bool;
}

/// The error that caused another, kept as a source (never flattened into a message string),
/// cheap to clone. Equality compares the messages (for tests of error values).
#[derive(Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Keeps `e` as the cause.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(e))
    }

    /// A cause that is only a description (no underlying error value exists).
    pub fn msg(text: impl Into<String>) -> Self {
        Self::new(Message(text.into()))
    }
}

#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}
