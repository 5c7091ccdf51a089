//! nodewire's library: every line of behaviour of the Cloud Run functions, and what the CLI, the
//! simulators' whole-system stack and the benchmarks reuse.
//!
//! Every function goes through the same stages: **arrive** (HTTP delivery → typed event; verdict →
//! status code) → **decode** (wire formats → validated types) → **observe** (read the VM, the Node
//! and the tokens, reduced to small facts) → **plan** (pure: facts + configuration → actions + next
//! step) → **act** (the only code that writes) → **publish** (the next step); **setup** is what a
//! process does once at start.
//!
//! Modules are ranked: a module imports only from its own rank or below, and there are no import
//! cycles (`shared/tests/layering.rs`). The flow, the chain of steps and the contracts are in
//! `ARCHITECTURE.md` at the workspace root; the threat model in `docs/security.md`.
//!
//! | module | rank, stage | does | must not |
//! | --- | --- | --- | --- |
//! | `text` | 0 | every cut of text (`shorten`, `echo`, `api_message`), on a UTF-8 character boundary | cut inside a character |
//! | `names` | 0, decode | validated GCE names, zones, project ids, `InstanceRef` (the one providerID parser), IPv4 CIDRs, `SubnetRef` | do I/O; let `/`, `..` or an oversized string reach a request path or a topic name |
//! | `error` | 0 | `Classify::is_retryable`, the one question every error answers; `Cause` keeps an error's source | be answered by matching message strings |
//! | `trace` | 0 | W3C `traceparent` and `X-Cloud-Trace-Context`: one VM's chain is one trace | do I/O |
//! | `shutdown` | 0, setup | the SIGTERM / SIGINT future | — |
//! | `select` | 1, plan | `Selector`, the one definition of "ours": `admits` (project, name prefix), `admits_vm` (and the labels) | do I/O; be re-implemented elsewhere |
//! | `config` | 1, setup | `Config::from_source` over any `Source` (tests inject a map): every process's variables, errors naming the variable, `EXIT_CONFIG` = 64 | let a missing or invalid variable pass |
//! | `config::push_auth` | 1, setup | who may deliver: `PushAuthSettings` (off, OIDC, Cloud Run's IAM check) | default to "off" |
//! | `config::chain` | 1, setup | `ChainConfig`: node subnet, pod range, node tags, token TTL and groups, join mode, JoinConfiguration version | the same |
//! | `join` | 1 | the kubeadm JoinConfiguration (every value a quoted scalar) and nodewire's metadata keys | do I/O |
//! | `event` | 2, decode | the `Decode` trait, `DecodeError`, shared JSON parsing | do I/O |
//! | `event::logentry` | 2, decode | the Cloud Logging `LogEntry` subset nodewire reads, every field optional | require a field |
//! | `event::instance` | 2, decode | Compute audit entry → `InstanceEvent`: the final, successful insert, bulkInsert or delete, Admin Activity log only | count a `first` entry, a failed operation or another log |
//! | `event::node` | 2, decode | Kubernetes audit (Ops Agent, GKE, bare `Event`, `EventList`) → `NodeEvents` | count anything but completed requests on `nodes` by the principal that makes that change |
//! | `event::step` | 2, decode | `StepMessage` (`nodewire.step/v1`), `Step`, `Cause` | guess at another schema version |
//! | `plan` | 2, plan | `gaps` (the one definition of "wired"), `plan(step, observed, config)` → actions and next step, or wait, ignore, refuse; `node_is_the_vms` | use clients, the clock or the environment |
//! | `plan::facts` | 2, plan | `VmFacts`, `NodeFacts`, `TokenFacts`, `Observed`: what the planner sees | hold API objects |
//! | `plan::eligibility` | 2, plan | may a VM join: one decision for `join`, `bootstrap` and `nodewire status` | prove a caller's identity (the join service does) |
//! | `privilege` | 2, data | the least-privilege table: per function its Compute permissions, Kubernetes grants, topics | be read at run time (the deployment and its tests read it) |
//! | `act` | 3, act | the home of every call to Compute Engine and Kubernetes | be bypassed |
//! | `act::toolkit` | 3, act | one bounded, jittered retry loop; one page walker (`Listed`); one HTTP status table | decide from message strings |
//! | `act::compute` | 3, act and observe | Compute client: get and list instances, subnet ranges; fingerprint-guarded writes with a `requestId`, followed to the operation's end | write without a fresh read; send a write whose result already holds |
//! | `act::k8s` | 3, act and observe | Kubernetes client: Nodes, taints, providerID, Events, bootstrap tokens, `cluster-info` and its CA pin, the sweep's lock | overwrite a concurrent writer; let a token's secret half reach logs |
//! | `act::deps` | 3, setup | `Deps` (configuration and bus) and `ChainDeps` (also the clients, chain and plan configuration), built once; `publish_step` | be rebuilt per delivery; hold an optional client |
//! | `act::execute` | 3, act | carries out the planner's actions for one VM; Warning Events for refusals | decide anything |
//! | `bus` | 3, publish | `Bus`; `PubSubBus` (official client, the emulator when configured); `InProcessBus` | fire and forget: every publish is awaited |
//! | `observe` | 3, observe | the reads (`one_vm`, `inventory`) and the pure reducers to the planner's facts | write anything |
//! | `locate` | 3, observe | which VM is behind a Node: `Locator`, `ClusterLocator`, `NoLocator` | guess when several VMs carry the name |
//! | `telemetry` | 3, setup | logging: Cloud Logging JSON or plain lines, `RUST_LOG`, span fields merged in | be initialised twice |
//! | `adapter` | 4, arrive | `Handler`, `serve` and `router`: HTTP, the per-delivery span, body cap, deadline, dead-lettering, panic guard, graceful shutdown | know what any function does |
//! | `adapter::auth` | 4, arrive | the Google-signed ID token → `Caller`, or 401, 403, 503 | read the delivery before the check; log or echo the token |
//! | `adapter::push` | 4, arrive | push envelope, CloudEvents, Scheduler request → `PushMeta`; `PushEvent` | do I/O or interpret the payload |
//! | `adapter::verdict` | 4, arrive | `Outcome`, `Verdict`: the only place errors become status codes | do I/O; be duplicated |
//! | `sweep` | 4 | `run`: under the lock, observe everything, heal (one step per VM at most, cooldown, bound), publish, report | write beyond its lock; keep its own "wired" or "ours" |
//! | `sweep::assess` | 4, plan | pure: the inventory → findings (`DriftKind`, the step that heals it, what the planner would refuse) | do I/O |
//! | `sweep::report` | 4 | `DriftKind` and its names; `Report` | — |
//! | `handlers` | 5 | one module per function, each a plain `handle` and a `handler(..)` constructor for the adapter | — (the binaries under `functions/` hold no logic either) |
//! | `handlers::instance_events` | 5 | Compute audit → `bootstrap` or `decommission` | read or write VMs or Nodes |
//! | `handlers::node_events` | 5 | Kubernetes audit → `assign-alias` or `release-alias`, the Node's VM located | write anything |
//! | `handlers::steps` | 5 | the seven step functions, one handler: observe → plan → act → publish | touch a VM not ours; act on what the message says instead of what it re-reads |
//! | `handlers::drift_sweep` | 5 | one sweep per delivery, answered with its JSON report | write (it only publishes steps) |
//! | `handlers::join` | 5 | the `join` service: `verify` (the identity token and the VM it names), the router and its answers | log or answer a token |
//! | `startup` | 5, setup | one start-up path per kind of process: configuration (exit 64) → telemetry → clients; `check` | build telemetry or clients before the configuration is valid |
//! | `testing` | tests | fixtures, a test configuration, an ID-token issuer stand-in, `Deps` over a recording bus, observed-state builders | be compiled into a Cloud Run binary (only `cfg(test)` or feature `testing`) |

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
