//! Process setup: the typed configuration, parsed once from the environment (or any
//! [`Source`], so tests inject a map instead of touching the process environment): [`Config`] for
//! every process (including the [`Selector`] built from `NODEWIRE_PROJECT`,
//! `NODEWIRE_INSTANCE_PREFIX` and `NODEWIRE_SELECTOR_LABELS`) and [`ChainConfig`] for the chain.
//! A missing or invalid variable is an error naming it; the start-up paths in `startup` exit with
//! code 64 ([`EXIT_CONFIG`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::names::{echo, validate_project_id};

/// Exit code for a bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Where configuration values come from.
pub trait Source {
    /// The value of `key`; `None` when unset. Empty values count as unset.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).filter(|v| !v.is_empty()).cloned()
    }
}

impl Source for BTreeMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_string())
    }
}

/// A configuration variable that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration variable {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn err(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// `var`'s value `url` must be `https://`, or `http://` on a loopback address: the one rule
/// for every endpoint nodewire is configured with.
fn endpoint(var: &'static str, url: &str) -> Result<(), ConfigError> {
    if crate::names::is_https_or_loopback_http(url) {
        Ok(())
    } else {
        Err(err(
            var,
            format!(
                "{:?}: must be https://, or http:// on a loopback address",
                echo(url)
            ),
        ))
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Cloud Logging structured JSON, one object a line.
    Json,
    /// Human-readable lines.
    Pretty,
    /// Pretty when stdout is a terminal, JSON otherwise.
    Auto,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "{:?} is not one of json, pretty, auto",
                echo(other)
            )),
        }
    }
}

/// Pub/Sub settings shared by every function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    /// The project that owns nodewire's topics.
    pub project: String,
    /// `http://HOST:PORT` of the emulator when `PUBSUB_EMULATOR_HOST` is set; `None` means
    /// Google's endpoint with Application Default Credentials.
    pub emulator_endpoint: Option<String>,
    /// Prepended to every step topic id (`nodewire-` → `nodewire-bootstrap`).
    pub topic_prefix: String,
    /// Full name of the topic permanent failures are forwarded to.
    pub dead_letter_topic: String,
    /// Upper bound for one publish, retries included.
    pub publish_timeout: Duration,
    /// Full name of the topic the Compute audit sink publishes to (`NODEWIRE_GCE_AUDIT_TOPIC`,
    /// default `gce-audit`): where `nodewire replay` sends Compute entries.
    pub gce_audit_topic: String,
    /// Likewise for Kubernetes audit entries (`NODEWIRE_K8S_AUDIT_TOPIC`, default `k8s-audit`).
    pub k8s_audit_topic: String,
}

impl PubSubConfig {
    /// `projects/P/topics/{prefix}{id}`.
    pub fn topic(&self, id: &str) -> String {
        format!(
            "projects/{}/topics/{}{}",
            self.project, self.topic_prefix, id
        )
    }

    /// The id of the push subscription that delivers to `function`: `{prefix}{function}-push`
    /// (the deployment creates it; nothing in the code reads it, the name is for people and
    /// the deployment contract).
    pub fn push_subscription(&self, function: &str) -> String {
        format!("{}{function}-push", self.topic_prefix)
    }

    /// The id of the pull subscription on the dead-letter topic that people review with
    /// `nodewire replay --dead-letter`: `{dead-letter topic id}-review`.
    pub fn dead_letter_review_subscription(&self) -> String {
        let topic = self
            .dead_letter_topic
            .rsplit('/')
            .next()
            .unwrap_or(&self.dead_letter_topic);
        format!("{topic}-review")
    }
}

/// Limits the adapter enforces on every delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Deadline of one delivery; past it the delivery is answered 503 (redelivered).
    pub request_timeout: Duration,
    /// How long in-flight deliveries may finish after SIGTERM (Cloud Run allows 10 s).
    pub shutdown_grace: Duration,
    /// A message still failing transiently this long after it was published is dead-lettered
    /// instead of retried again.
    pub max_retry_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(8),
            max_retry_age: Duration::from_secs(3600),
        }
    }
}

pub use crate::select::Selector;

mod push_auth;
pub use push_auth::{
    GOOGLE_JWKS_URL, OidcSettings, PushAuthSettings, SignatureCheck, UNKNOWN_KID_REFETCH,
};

mod chain;
pub use chain::{ChainConfig, JoinApi, JoinMode, RangeOrder, SweepLimits};

/// How to reach the Kubernetes API server: read from the variables here, connected by
/// `act::k8s::Kube::new` (the one description of the connection).
#[derive(Clone, PartialEq, Eq)]
pub enum KubeSettings {
    /// `NODEWIRE_KUBECONFIG`: a kubeconfig file (its current context). Refused at start when
    /// it skips TLS verification (unless `NODEWIRE_KUBE_ALLOW_INSECURE=true`) or runs a
    /// credential plugin (`exec`, `auth-provider`; unless `NODEWIRE_KUBE_ALLOW_EXEC=true`).
    Kubeconfig {
        path: std::path::PathBuf,
        allow_insecure_tls: bool,
        allow_exec: bool,
    },
    /// `NODEWIRE_KUBE_API_URL` (+ `NODEWIRE_KUBE_TOKEN_FILE`, `NODEWIRE_KUBE_CA_FILE`): URL,
    /// bearer token and CA, as a pod's service account has them.
    Direct {
        url: String,
        /// A bearer token given inline (tests, the sandbox; never from a variable). Never
        /// shown by `Debug`.
        token: Option<String>,
        /// A file holding the bearer token, re-read by the client at least every minute, so a
        /// projected or rotated token is picked up (kube's `TokenFile`). Takes the place of
        /// `token` when both are set.
        token_file: Option<std::path::PathBuf>,
        /// A PEM file of the cluster CA, read when the client is built.
        ca_file: Option<std::path::PathBuf>,
        /// The cluster CA given inline (PEM; tests, the sandbox). Takes the place of
        /// `ca_file` when both are set.
        ca_pem: Option<String>,
    },
}

impl std::fmt::Debug for KubeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeSettings::Kubeconfig { path, .. } => {
                f.debug_tuple("Kubeconfig").field(path).finish()
            }
            KubeSettings::Direct {
                url,
                token,
                token_file,
                ca_file,
                ..
            } => f
                .debug_struct("Direct")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "[redacted]"))
                .field("token_file", token_file)
                .field("ca_file", ca_file)
                .finish_non_exhaustive(),
        }
    }
}

/// The kinds of process that serve deliveries, by what their start-up reads and connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// Only publishes (`startup::router`): `instance-events`.
    Router,
    /// Locates VMs behind Nodes (`startup::node_router`): `node-events`; Kubernetes optional.
    NodeRouter,
    /// A step function or the drift sweep (`startup::chain`): Kubernetes and the chain's variables.
    Chain,
}

/// Everything a function needs to know at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `PORT` (Cloud Run), default 8080.
    pub port: u16,
    /// `K_SERVICE` (Cloud Run), else the binary's name.
    pub service: String,
    /// `K_REVISION` (Cloud Run).
    pub revision: Option<String>,
    /// `NODEWIRE_PROJECT` (else `GOOGLE_CLOUD_PROJECT`): the project of the cluster's VMs.
    pub project: String,
    pub pubsub: PubSubConfig,
    pub selector: Selector,
    /// `LOG_FORMAT`: json, pretty or auto (default).
    pub log_format: LogFormat,
    pub limits: Limits,
    /// `NODEWIRE_COMPUTE_ENDPOINT`: the Compute API's base URL (the simulator's in tests);
    /// unset means Google's, with Application Default Credentials.
    pub compute_endpoint: Option<String>,
    /// The Kubernetes API server, when this function talks to it.
    pub kube: Option<KubeSettings>,
    /// Who may deliver to this function (`NODEWIRE_PUSH_AUTH` and friends).
    pub push_auth: PushAuthSettings,
    /// `NODEWIRE_K8S_AUDIT_LOG` (default `projects/{NODEWIRE_PROJECT}/logs/k8s_audit`): the full
    /// `logName` the control plane's Ops Agent writes the kube-apiserver audit file to; entries
    /// of any other log are not acted on by `node-events`.
    pub k8s_audit_log: String,
    /// `NODEWIRE_JOIN_MODE`: also `node-events`' (in metadata mode it decides the kubelets'
    /// CSRs made with nodewire's bootstrap tokens).
    pub join_mode: JoinMode,
}

fn parse_var<T: FromStr>(src: &impl Source, var: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match src.get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| err(var, format!("{:?}: {e}", echo(&v)))),
    }
}

fn parse_secs(
    src: &impl Source,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let secs: f64 = parse_var(src, var, default.as_secs_f64())?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(err(var, "must be a number of seconds between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn validate_topic_part(var: &'static str, v: &str, allow_empty: bool) -> Result<(), ConfigError> {
    let ok_chars = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b));
    if (!allow_empty && v.is_empty()) || !ok_chars || v.len() > 200 {
        return Err(err(
            var,
            format!(
                "{:?}: only letters, digits and -_.~+% are allowed in a topic id",
                echo(v)
            ),
        ));
    }
    Ok(())
}

/// `NODEWIRE_SELECTOR_LABELS` (`k=v,k2=v2`): GCE labels every VM of ours carries.
fn parse_selector_labels(src: &impl Source) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut selector_labels = BTreeMap::new();
    if let Some(raw) = src.get("NODEWIRE_SELECTOR_LABELS") {
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(err(
                    "NODEWIRE_SELECTOR_LABELS",
                    format!("{:?} is not key=value", echo(pair)),
                ));
            };
            let label_ok = |s: &str| {
                s.len() <= 63
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
            };
            if k.is_empty() || !label_ok(k) || !label_ok(v) {
                return Err(err(
                    "NODEWIRE_SELECTOR_LABELS",
                    format!("{:?} is not a valid GCE label", echo(pair)),
                ));
            }
            selector_labels.insert(k.to_string(), v.to_string());
        }
    }
    Ok(selector_labels)
}

impl Config {
    /// Parses the configuration. `binary` names the service when `K_SERVICE` is unset.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or invalid.
    pub fn from_source(src: &impl Source, binary: &str) -> Result<Self, ConfigError> {
        let project = src
            .get("NODEWIRE_PROJECT")
            .or_else(|| src.get("GOOGLE_CLOUD_PROJECT"))
            .ok_or_else(|| {
                err(
                    "NODEWIRE_PROJECT",
                    "is required: the Google Cloud project of the cluster's VMs",
                )
            })?;
        validate_project_id(&project).map_err(|e| err("NODEWIRE_PROJECT", e.to_string()))?;

        let pubsub_project = src.get("PUBSUB_PROJECT").unwrap_or_else(|| project.clone());
        validate_project_id(&pubsub_project).map_err(|e| err("PUBSUB_PROJECT", e.to_string()))?;
        let emulator_endpoint = match src.get("PUBSUB_EMULATOR_HOST") {
            None => None,
            Some(h) => {
                let ok = !h.contains("://")
                    && h.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    });
                if !ok {
                    return Err(err(
                        "PUBSUB_EMULATOR_HOST",
                        format!("{:?} is not HOST:PORT", echo(&h)),
                    ));
                }
                // The emulator speaks plain, unauthenticated HTTP: a stray variable must not
                // send every step (and dead letter) to some other host.
                let remote_ok: bool =
                    parse_var(src, "NODEWIRE_ALLOW_REMOTE_PUBSUB_EMULATOR", false)?;
                if !remote_ok && !crate::names::is_loopback_http(&format!("http://{h}/")) {
                    return Err(err(
                        "PUBSUB_EMULATOR_HOST",
                        format!(
                            "{:?} is not a loopback address (set \
                             NODEWIRE_ALLOW_REMOTE_PUBSUB_EMULATOR=true to use an emulator \
                             elsewhere)",
                            echo(&h)
                        ),
                    ));
                }
                Some(format!("http://{h}"))
            }
        };
        let topic_prefix = src
            .get("NODEWIRE_TOPIC_PREFIX")
            .unwrap_or_else(|| "nodewire-".into());
        validate_topic_part("NODEWIRE_TOPIC_PREFIX", &topic_prefix, true)?;
        let dlq_id = src
            .get("NODEWIRE_DEAD_LETTER_TOPIC")
            .unwrap_or_else(|| format!("{topic_prefix}dead-letter"));
        validate_topic_part("NODEWIRE_DEAD_LETTER_TOPIC", &dlq_id, false)?;
        let gce_audit = src
            .get("NODEWIRE_GCE_AUDIT_TOPIC")
            .unwrap_or_else(|| "gce-audit".into());
        validate_topic_part("NODEWIRE_GCE_AUDIT_TOPIC", &gce_audit, false)?;
        let k8s_audit = src
            .get("NODEWIRE_K8S_AUDIT_TOPIC")
            .unwrap_or_else(|| "k8s-audit".into());
        validate_topic_part("NODEWIRE_K8S_AUDIT_TOPIC", &k8s_audit, false)?;
        let pubsub = PubSubConfig {
            gce_audit_topic: format!("projects/{pubsub_project}/topics/{gce_audit}"),
            k8s_audit_topic: format!("projects/{pubsub_project}/topics/{k8s_audit}"),
            dead_letter_topic: format!("projects/{pubsub_project}/topics/{dlq_id}"),
            project: pubsub_project,
            emulator_endpoint,
            topic_prefix,
            publish_timeout: parse_secs(
                src,
                "NODEWIRE_PUBLISH_TIMEOUT_SECS",
                Duration::from_secs(10),
            )?,
        };

        let name_prefix = src.get("NODEWIRE_INSTANCE_PREFIX");
        if let Some(p) = &name_prefix {
            let ok = p.len() <= 62
                && p.as_bytes()[0].is_ascii_lowercase()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(err(
                    "NODEWIRE_INSTANCE_PREFIX",
                    format!(
                        "{:?}: must be the start of a VM name (lowercase letters, digits, '-')",
                        echo(p)
                    ),
                ));
            }
        }

        let defaults = Limits::default();
        let max_body_bytes: usize =
            parse_var(src, "NODEWIRE_MAX_BODY_BYTES", defaults.max_body_bytes)?;
        if !(1024..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(err(
                "NODEWIRE_MAX_BODY_BYTES",
                "must be between 1024 and 67108864",
            ));
        }
        let limits = Limits {
            max_body_bytes,
            request_timeout: parse_secs(
                src,
                "NODEWIRE_REQUEST_TIMEOUT_SECS",
                defaults.request_timeout,
            )?,
            shutdown_grace: parse_secs(
                src,
                "NODEWIRE_SHUTDOWN_GRACE_SECS",
                defaults.shutdown_grace,
            )?,
            max_retry_age: parse_secs(src, "NODEWIRE_MAX_RETRY_AGE_SECS", defaults.max_retry_age)?,
        };

        let compute_endpoint = src.get("NODEWIRE_COMPUTE_ENDPOINT");
        if let Some(e) = &compute_endpoint {
            endpoint("NODEWIRE_COMPUTE_ENDPOINT", e)?;
        }
        let kube = match (
            src.get("NODEWIRE_KUBECONFIG"),
            src.get("NODEWIRE_KUBE_API_URL"),
        ) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "NODEWIRE_KUBE_API_URL",
                    "set either NODEWIRE_KUBECONFIG or NODEWIRE_KUBE_API_URL, not both",
                ));
            }
            (Some(path), None) => Some(KubeSettings::Kubeconfig {
                path: path.into(),
                allow_insecure_tls: parse_var(src, "NODEWIRE_KUBE_ALLOW_INSECURE", false)?,
                allow_exec: parse_var(src, "NODEWIRE_KUBE_ALLOW_EXEC", false)?,
            }),
            (None, Some(url)) => {
                endpoint("NODEWIRE_KUBE_API_URL", &url)?;
                Some(KubeSettings::Direct {
                    url,
                    token: None,
                    token_file: src.get("NODEWIRE_KUBE_TOKEN_FILE").map(Into::into),
                    ca_file: src.get("NODEWIRE_KUBE_CA_FILE").map(Into::into),
                    ca_pem: None,
                })
            }
            (None, None) => None,
        };

        let selector = Selector {
            project: project.clone(),
            name_prefix,
            labels: parse_selector_labels(src)?,
        };
        let k8s_audit_log = src
            .get("NODEWIRE_K8S_AUDIT_LOG")
            .unwrap_or_else(|| format!("projects/{project}/logs/k8s_audit"));
        let log_ok = k8s_audit_log
            .strip_prefix("projects/")
            .and_then(|r| r.split_once("/logs/"))
            .is_some_and(|(p, id)| {
                validate_project_id(p).is_ok()
                    && !id.is_empty()
                    && id.len() <= 512
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b))
            });
        if !log_ok {
            return Err(err(
                "NODEWIRE_K8S_AUDIT_LOG",
                format!(
                    "{:?} is not a log name projects/PROJECT/logs/LOG_ID",
                    echo(&k8s_audit_log)
                ),
            ));
        }
        Ok(Self {
            join_mode: JoinMode::from_source(src)?,
            push_auth: PushAuthSettings::from_source(src)?,
            k8s_audit_log,
            compute_endpoint,
            kube,
            port: parse_var(src, "PORT", 8080u16)?,
            service: src.get("K_SERVICE").unwrap_or_else(|| binary.to_string()),
            revision: src.get("K_REVISION"),
            project,
            pubsub,
            selector,
            log_format: parse_var(src, "LOG_FORMAT", LogFormat::Auto)?,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([("NODEWIRE_PROJECT", "example-project")])
    }

    #[test]
    fn defaults() {
        let c = Config::from_source(&base(), "instance-events").expect("valid");
        assert_eq!(c.port, 8080);
        assert_eq!(c.service, "instance-events");
        assert_eq!(c.pubsub.project, "example-project");
        assert_eq!(c.pubsub.emulator_endpoint, None);
        assert_eq!(
            c.pubsub.topic("bootstrap"),
            "projects/example-project/topics/nodewire-bootstrap"
        );
        assert_eq!(
            c.pubsub.dead_letter_topic,
            "projects/example-project/topics/nodewire-dead-letter"
        );
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.log_format, LogFormat::Auto);
    }

    #[test]
    fn overrides() {
        let mut m = base();
        m.extend([
            ("PORT", "9090"),
            ("K_SERVICE", "svc"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
            ("PUBSUB_PROJECT", "other-project"),
            ("NODEWIRE_TOPIC_PREFIX", "t1-"),
            ("NODEWIRE_INSTANCE_PREFIX", "k8s-"),
            ("NODEWIRE_REQUEST_TIMEOUT_SECS", "2.5"),
            ("LOG_FORMAT", "pretty"),
        ]);
        let c = Config::from_source(&m, "x").expect("valid");
        assert_eq!(c.port, 9090);
        assert_eq!(c.service, "svc");
        assert_eq!(
            c.pubsub.emulator_endpoint.as_deref(),
            Some("http://127.0.0.1:8085")
        );
        assert_eq!(
            c.pubsub.topic("finalize"),
            "projects/other-project/topics/t1-finalize"
        );
        assert_eq!(
            c.pubsub.dead_letter_topic,
            "projects/other-project/topics/t1-dead-letter"
        );
        assert_eq!(c.selector.name_prefix.as_deref(), Some("k8s-"));
        assert_eq!(c.selector.project, "example-project");
        let mut m = base();
        m.insert("NODEWIRE_SELECTOR_LABELS", "cluster=demo, tier=node");
        let labels = Config::from_source(&m, "x")
            .expect("labels")
            .selector
            .labels;
        assert_eq!(labels.get("cluster").map(String::as_str), Some("demo"));
        assert_eq!(labels.len(), 2);
        assert_eq!(c.limits.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.compute_endpoint, None);
        assert_eq!(c.kube, None);
        let mut m = base();
        m.extend([
            ("NODEWIRE_COMPUTE_ENDPOINT", "http://127.0.0.1:8091"),
            ("NODEWIRE_KUBE_API_URL", "https://10.0.0.2:6443"),
            ("NODEWIRE_KUBE_TOKEN_FILE", "/var/run/token"),
        ]);
        let c = Config::from_source(&m, "x").expect("valid");
        assert_eq!(c.compute_endpoint.as_deref(), Some("http://127.0.0.1:8091"));
        assert!(
            matches!(c.kube, Some(KubeSettings::Direct { ref url, token_file: Some(_), ca_file: None, .. }) if url == "https://10.0.0.2:6443")
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_source(&BTreeMap::new(), "x").expect_err("missing");
        assert_eq!(e.var, "NODEWIRE_PROJECT");
        for (var, value) in [
            ("NODEWIRE_PROJECT", "Bad Project"),
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("PUBSUB_EMULATOR_HOST", "http://127.0.0.1:8085"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1"),
            ("NODEWIRE_TOPIC_PREFIX", "a/b"),
            ("NODEWIRE_INSTANCE_PREFIX", "K8S"),
            ("NODEWIRE_REQUEST_TIMEOUT_SECS", "-1"),
            ("NODEWIRE_REQUEST_TIMEOUT_SECS", "NaN"),
            ("NODEWIRE_MAX_BODY_BYTES", "10"),
            ("LOG_FORMAT", "xml"),
            ("NODEWIRE_COMPUTE_ENDPOINT", "http://compute.example.com"),
            ("NODEWIRE_KUBE_API_URL", "http://10.0.0.2:6443"),
            ("NODEWIRE_SELECTOR_LABELS", "novalue"),
            ("NODEWIRE_SELECTOR_LABELS", "Bad=1"),
        ] {
            let mut m = base();
            m.insert(var, value);
            let e = Config::from_source(&m, "x").expect_err(var);
            assert_eq!(e.var, var, "{value}: {e}");
            assert!(e.to_string().contains(var));
        }
    }
}
