//! Pod ranges that answered `IP_SPACE_EXHAUSTED` lately (issue 22, several pod ranges). Each
//! try at a full range costs a refused Compute operation; once the first range is full every
//! new node would pay one. A range seen full is tried last for [`FullRanges::FOR`], within one
//! process (a Cloud Run instance); it is still tried, so a block freed there meanwhile is only
//! found later, never lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ranges seen full, and when.
#[derive(Debug, Default)]
pub struct FullRanges {
    seen: Mutex<HashMap<String, Instant>>,
}

impl FullRanges {
    /// How long a full range is tried last.
    pub const FOR: Duration = Duration::from_secs(300);

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> R) -> R {
        // A panic elsewhere while holding the lock leaves a map that is still valid.
        let mut m = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut m)
    }

    /// `range` answered `IP_SPACE_EXHAUSTED` now.
    pub fn mark(&self, range: &str) {
        self.with(|m| {
            m.insert(range.to_string(), Instant::now());
        });
    }

    /// A block of `range` was allocated: it has room again.
    pub fn clear(&self, range: &str) {
        self.with(|m| {
            m.remove(range);
        });
    }

    /// `ranges` in the order to try them at `now`: those not seen full lately first, in their
    /// configured order, then the others, also in configured order.
    pub fn order_at(&self, ranges: &[String], now: Instant) -> Vec<String> {
        self.with(|m| {
            m.retain(|_, at| now.saturating_duration_since(*at) < Self::FOR);
            let (full, room): (Vec<&String>, Vec<&String>) =
                ranges.iter().partition(|r| m.contains_key(*r));
            room.into_iter().chain(full).cloned().collect()
        })
    }

    /// [`Self::order_at`] now.
    pub fn order(&self, ranges: &[String]) -> Vec<String> {
        self.order_at(ranges, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_full_range_is_tried_last_for_a_while_then_first_again() {
        let f = FullRanges::default();
        let all = names(&["pods", "pods-b", "pods-c"]);
        assert_eq!(f.order(&all), all);
        f.mark("pods");
        let now = Instant::now();
        assert_eq!(f.order_at(&all, now), names(&["pods-b", "pods-c", "pods"]));
        f.mark("pods-b");
        assert_eq!(f.order_at(&all, now), names(&["pods-c", "pods", "pods-b"]));
        // Room again in pods.
        f.clear("pods");
        assert_eq!(f.order_at(&all, now), names(&["pods", "pods-c", "pods-b"]));
        // Forgotten after FOR.
        let later = now + FullRanges::FOR + Duration::from_secs(1);
        assert_eq!(f.order_at(&all, later), all);
    }
}
