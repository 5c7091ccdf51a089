//! Fault injection and the request log, shared by both simulators.
//!
//! Faults are configured per method name (`instances.setTags`, `nodes.patch`, …) with a
//! default for every other method: a probability of answering with a retryable error (429,
//! 503, or 403 `rateLimitExceeded` for Compute), added latency, and for Compute a probability
//! that an accepted operation fails asynchronously. The random source is seeded, so a run is
//! repeatable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// Which retryable error an injected fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedError {
    /// 429 Too Many Requests.
    TooManyRequests,
    /// 503 Service Unavailable.
    Unavailable,
    /// 403 with reason `rateLimitExceeded` (Compute's per-minute quotas).
    RateLimitExceeded,
    /// 403 for a missing permission (not retryable; never among the default faults). The
    /// Kubernetes simulator answers it as 403 `Forbidden`.
    PermissionDenied,
}

/// Faults for one method.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// Probability (0..=1) that a request is refused with one of `errors`.
    pub error_rate: f64,
    /// The errors to choose from, uniformly.
    pub errors: Vec<InjectedError>,
    /// Added to every request before it is handled.
    pub latency: Duration,
    /// Probability (0..=1) that an accepted Compute operation ends DONE with an error.
    pub async_failure_rate: f64,
    /// Probability (0..=1) that a request is handled — its effect applied — and then answered
    /// 503 as if the connection had dropped: the write happened, the answer was lost. A retry
    /// must not apply it twice (Compute: the same `requestId`).
    pub lost_answer_rate: f64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            errors: vec![
                InjectedError::TooManyRequests,
                InjectedError::Unavailable,
                InjectedError::RateLimitExceeded,
            ],
            latency: Duration::ZERO,
            async_failure_rate: 0.0,
            lost_answer_rate: 0.0,
        }
    }
}

impl FaultSpec {
    /// `rate` of requests refused with any of the three errors, and the same rate of
    /// asynchronous operation failures.
    pub fn flaky(rate: f64) -> Self {
        Self {
            error_rate: rate,
            async_failure_rate: rate,
            ..Self::default()
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    /// The API method (`instances.setTags`, `nodes.patch`, …).
    pub method: String,
    pub http_method: String,
    pub path: String,
    pub query: String,
    pub body: serde_json::Value,
    pub status: u16,
    /// The body answered (JSON).
    pub response: serde_json::Value,
    /// Time since the simulator started.
    pub at: Duration,
    /// True when the answer came from fault injection.
    pub injected: bool,
}

/// Faults, the random source and the request log.
#[derive(Debug)]
pub struct Chaos {
    started: Instant,
    faults: Mutex<(FaultSpec, HashMap<String, FaultSpec>)>,
    rng: Mutex<rand::rngs::StdRng>,
    log: Mutex<Vec<LoggedRequest>>,
}

/// Locks `m`, also after a panic in another holder (the data stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Chaos {
    pub fn new(seed: u64) -> Self {
        Self {
            started: Instant::now(),
            faults: Mutex::new((FaultSpec::default(), HashMap::new())),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Sets the faults of every method that has no specific entry.
    pub fn set_default_faults(&self, spec: FaultSpec) {
        lock(&self.faults).0 = spec;
    }

    /// Sets the faults of one method.
    pub fn set_faults(&self, method: &str, spec: FaultSpec) {
        lock(&self.faults).1.insert(method.to_string(), spec);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        *lock(&self.faults) = (FaultSpec::default(), HashMap::new());
    }

    pub fn faults_for(&self, method: &str) -> FaultSpec {
        let f = lock(&self.faults);
        f.1.get(method).cloned().unwrap_or_else(|| f.0.clone())
    }

    /// Draws whether a request of `method` is refused, and with what.
    pub fn draw_error(&self, method: &str) -> Option<InjectedError> {
        let spec = self.faults_for(method);
        if spec.error_rate <= 0.0 || spec.errors.is_empty() {
            return None;
        }
        let mut rng = lock(&self.rng);
        if rng.random_bool(spec.error_rate.clamp(0.0, 1.0)) {
            let i = rng.random_range(0..spec.errors.len());
            Some(spec.errors[i])
        } else {
            None
        }
    }

    /// Draws whether the answer to a handled request of `method` is lost.
    pub fn draw_lost_answer(&self, method: &str) -> bool {
        let rate = self.faults_for(method).lost_answer_rate;
        rate > 0.0 && lock(&self.rng).random_bool(rate.clamp(0.0, 1.0))
    }

    /// Draws whether an accepted operation of `method` fails asynchronously.
    pub fn draw_async_failure(&self, method: &str) -> bool {
        let rate = self.faults_for(method).async_failure_rate;
        rate > 0.0 && lock(&self.rng).random_bool(rate.clamp(0.0, 1.0))
    }

    /// A uniform draw in `0..n` from the seeded source.
    pub fn draw_index(&self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            lock(&self.rng).random_range(0..n)
        }
    }

    /// A probability draw from the seeded source.
    pub fn draw_bool(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.rng).random_bool(p.clamp(0.0, 1.0))
    }

    /// Eight random bytes (fingerprints, ids).
    pub fn draw_u64(&self) -> u64 {
        lock(&self.rng).random()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn record(&self, entry: LoggedRequest) {
        lock(&self.log).push(entry);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.log).clone()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.log).clear();
    }
}
