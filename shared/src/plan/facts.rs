//! PLAN, its inputs: the small facts `observe` reduces a VM, its Node and its join tokens to.
//! Pure data and pure parsers; no clients, no clock (a time is always passed in).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::names::{Cidr, InstanceRef, SubnetRef};

/// An alias range as observed on nic0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// As the API returns it (`10.4.1.0/24`); sent back unchanged when the range is kept.
    pub cidr: String,
    pub range_name: Option<String>,
    /// `cidr` parsed, once ([`Alias::new`]); `None` when it is not an IPv4 network.
    pub block: Option<Cidr>,
}

impl Alias {
    /// An alias range, its CIDR parsed once.
    pub fn new(cidr: impl Into<String>, range_name: Option<String>) -> Self {
        let cidr = cidr.into();
        Self {
            block: cidr.parse().ok(),
            cidr,
            range_name,
        }
    }
}

/// A VM's lifecycle state (`instance.status`), parsed once from the API's string. The values
/// are the Compute API's `Instance.Status` enum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VmStatus {
    Pending,
    Provisioning,
    Staging,
    Running,
    PendingStop,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Repairing,
    Terminated,
    Deprovisioning,
    /// A value this version does not know (kept, shortened, for messages).
    Other(String),
}

impl VmStatus {
    /// Parses the API's value; an unknown one is kept as [`VmStatus::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "PENDING" => Self::Pending,
            "PROVISIONING" => Self::Provisioning,
            "STAGING" => Self::Staging,
            "RUNNING" => Self::Running,
            "PENDING_STOP" => Self::PendingStop,
            "STOPPING" => Self::Stopping,
            "STOPPED" => Self::Stopped,
            "SUSPENDING" => Self::Suspending,
            "SUSPENDED" => Self::Suspended,
            "REPAIRING" => Self::Repairing,
            "TERMINATED" => Self::Terminated,
            "DEPROVISIONING" => Self::Deprovisioning,
            other => Self::Other(crate::text::shorten(other, 32)),
        }
    }

    /// The API's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "PENDING",
            Self::Provisioning => "PROVISIONING",
            Self::Staging => "STAGING",
            Self::Running => "RUNNING",
            Self::PendingStop => "PENDING_STOP",
            Self::Stopping => "STOPPING",
            Self::Stopped => "STOPPED",
            Self::Suspending => "SUSPENDING",
            Self::Suspended => "SUSPENDED",
            Self::Repairing => "REPAIRING",
            Self::Terminated => "TERMINATED",
            Self::Deprovisioning => "DEPROVISIONING",
            Self::Other(s) => s,
        }
    }

    /// Still on its way to RUNNING (created, not booted yet).
    pub fn is_booting(&self) -> bool {
        matches!(self, Self::Pending | Self::Provisioning | Self::Staging)
    }
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts of a VM the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    pub instance: InstanceRef,
    /// The numeric instance id (a VM recreated under the same name has another).
    pub id: Option<String>,
    /// `creationTimestamp`, Unix seconds.
    pub created_at: Option<i64>,
    /// Its lifecycle state, parsed once.
    pub status: VmStatus,
    pub labels: BTreeMap<String, String>,
    pub can_ip_forward: bool,
    /// nic0's subnetwork, parsed from its self link (`None`: no nic0, or not a link).
    pub subnet: Option<SubnetRef>,
    pub aliases: Vec<Alias>,
    pub tags: Vec<String>,
    /// The `kubeadm-join` metadata key is present.
    pub join_metadata: bool,
    /// The VM carries nodewire's mark that it joined (`nodewire-joined`, written when its join
    /// metadata is cleared): its disk has a kubelet configuration, so `kubeadm join` would
    /// fail its preflight there.
    pub joined: bool,
    /// The kubelet restarts nodewire asked for (`nodewire-restart-kubelet`), when any.
    pub kubelet_restarts: Option<Attempts>,
    /// The join tokens minted for it so far (`nodewire-bootstrap-attempts`), when any.
    pub bootstrap_attempts: Option<Attempts>,
    /// The service accounts it runs as.
    pub service_accounts: Vec<String>,
}

/// The bounds of something nodewire repeats on a VM until it has its effect: at most
/// [`Budget::max`] attempts, spaced by a doubling backoff from [`Budget::first_backoff`], the
/// count starting again after [`Budget::window`] (when set) without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub first_backoff: Duration,
    pub window: Option<Duration>,
}

impl Budget {
    /// Join tokens for a VM that never joins (metadata mode, `nodewire-bootstrap-attempts`):
    /// six a day at most, 30 minutes apart, doubling — not one per sweep (issue 10, item 4).
    pub const JOIN_TOKENS: Budget = Budget {
        max: 6,
        first_backoff: Duration::from_secs(1800),
        window: Some(Duration::from_secs(24 * 3600)),
    };
    /// Kubelet restarts asked for to bring back a lost Node (`nodewire-restart-kubelet`):
    /// three, 5 minutes apart, doubling; then the lost Node needs a person.
    pub const KUBELET_RESTARTS: Budget = Budget {
        max: 3,
        first_backoff: Duration::from_secs(300),
        window: None,
    };

    /// How long after attempt `count` the next may be made.
    pub fn backoff(&self, count: u32) -> Duration {
        self.first_backoff
            .saturating_mul(2u32.pow(count.saturating_sub(1).min(8)))
    }
}

/// Attempts made so far: how many, and how long ago the last. Stored in the VM's metadata as
/// `COUNT@UNIX-SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    pub count: u32,
    pub age: Duration,
}

/// Why no attempt is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDue {
    /// The budget is spent; `resets_in` when it has a window.
    Spent {
        count: u32,
        resets_in: Option<Duration>,
    },
    /// The backoff after attempt `count` has not passed.
    Backoff {
        count: u32,
        age: Duration,
        next_in: Duration,
    },
}

impl Attempts {
    /// Reads `COUNT@UNIX-SECONDS` as of `now` (Unix seconds). Junk reads as `budget` spent
    /// now, so a hostile or broken value never leads to more attempts; a time in the future
    /// is an age of zero.
    pub fn parse(value: &str, now: i64, budget: &Budget) -> Self {
        let parsed = value.split_once('@').and_then(|(c, t)| {
            let count = c.trim().parse::<u32>().ok()?;
            let at = t.trim().parse::<i64>().ok()?;
            Some(Self {
                count,
                age: Duration::from_secs(u64::try_from(now.saturating_sub(at)).unwrap_or(0)),
            })
        });
        parsed.unwrap_or(Self {
            count: budget.max,
            age: Duration::ZERO,
        })
    }

    /// The metadata value recording attempt `count` at `now`.
    pub fn value(count: u32, now: i64) -> String {
        format!("{count}@{now}")
    }

    /// The number of the next attempt, or why none is due yet.
    pub fn next(this: Option<Self>, budget: &Budget) -> Result<u32, NotDue> {
        let Some(a) = this else { return Ok(1) };
        if budget.window.is_some_and(|w| a.age >= w) {
            return Ok(1);
        }
        if a.count >= budget.max {
            return Err(NotDue::Spent {
                count: a.count,
                resets_in: budget.window.map(|w| w.saturating_sub(a.age)),
            });
        }
        let wait = budget.backoff(a.count);
        if a.age < wait {
            return Err(NotDue::Backoff {
                count: a.count,
                age: a.age,
                next_in: wait.saturating_sub(a.age),
            });
        }
        Ok(a.count + 1)
    }
}

/// The facts of a Node the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub provider_id: Option<String>,
    pub pod_cidr: Option<String>,
    pub unwired_taint: bool,
    /// When the Node was created (its registration), Unix seconds: the time from
    /// registration to wired, and (against the VM's creation) which instance registered it.
    pub registered_at: Option<i64>,
    /// `metadata.uid`: a delete of a stale Node is preconditioned on it.
    pub uid: Option<String>,
    /// The instance id nodewire recorded on it (annotation `nodewire.io/instance-id`).
    pub instance_id: Option<String>,
    /// It has a `deletionTimestamp` (a finalizer holds it).
    pub deleting: bool,
    /// Its `NetworkUnavailable` condition is `True`.
    pub network_unavailable: bool,
}

/// A bootstrap token minted for this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub id: String,
    pub expired: bool,
}

/// Everything observed about one VM, as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The VM key the step is about (present even when the VM is gone).
    pub instance: InstanceRef,
    pub vm: Option<VmFacts>,
    pub node: Option<NodeFacts>,
    pub tokens: Vec<TokenFacts>,
}
