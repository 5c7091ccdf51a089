//! Process setup: one start-up path per kind of process, in the same order everywhere —
//! configuration (a missing or invalid variable exits with code 64, naming it) → telemetry →
//! clients. A function's `main` is a few lines: one of these, then `adapter::serve`.

use std::sync::Arc;

use crate::act::deps::{ChainDeps, Deps, SetupError};
use crate::config::{ChainConfig, Config, EXIT_CONFIG, Env, PushAuthSettings, Source};
use crate::locate::{ClusterLocator, Locator};

pub use crate::config::ServiceKind;

/// The configuration a service of `kind` starts with, from any [`Source`]: exactly the checks
/// the start-up paths make before they connect anything (the deployment contract test runs
/// the Terraform's environment through this). The error is the line the process would print.
///
/// # Errors
/// The first missing or invalid variable, as `configuration variable VAR: problem`.
pub fn check(
    binary: &str,
    kind: ServiceKind,
    src: &impl Source,
) -> Result<(Config, Option<ChainConfig>), String> {
    let config = Config::from_source(src, binary).map_err(|e| e.to_string())?;
    if config.push_auth == PushAuthSettings::Unset {
        return Err(
            "configuration variables NODEWIRE_PUSH_AUDIENCES and NODEWIRE_PUSH_INVOKERS: \
                    are required (who may deliver to this function); NODEWIRE_PUSH_AUTH=off only \
                    for loopback use"
                .to_string(),
        );
    }
    if kind != ServiceKind::Chain {
        return Ok((config, None));
    }
    if config.kube.is_none() {
        return Err(
            "configuration variable NODEWIRE_KUBECONFIG or NODEWIRE_KUBE_API_URL: is required"
                .to_string(),
        );
    }
    let chain = ChainConfig::from_source(src).map_err(|e| e.to_string())?;
    Ok((config, Some(chain)))
}

/// Prints `binary: problem` and exits with [`EXIT_CONFIG`].
fn exit_config(binary: &str, problem: &dyn std::fmt::Display) -> ! {
    eprintln!("{binary}: {problem}");
    std::process::exit(EXIT_CONFIG);
}

/// The process configuration, or exit 64.
pub fn config_or_exit(binary: &str) -> Config {
    Config::from_source(&Env, binary).unwrap_or_else(|e| exit_config(binary, &e))
}

/// The configuration of a service of `kind` ([`check`]), or exit 64.
fn service_config_or_exit(binary: &str, kind: ServiceKind) -> (Config, Option<ChainConfig>) {
    check(binary, kind, &Env).unwrap_or_else(|e| exit_config(binary, &e))
}

/// The chain's configuration for a process that serves no deliveries (the CLI): the
/// Kubernetes API is required too, or exit 64.
pub fn chain_config_or_exit(binary: &str, config: &Config) -> ChainConfig {
    if config.kube.is_none() {
        exit_config(
            binary,
            &"configuration variable NODEWIRE_KUBECONFIG or NODEWIRE_KUBE_API_URL: is required",
        );
    }
    ChainConfig::from_source(&Env).unwrap_or_else(|e| exit_config(binary, &e))
}

/// Connects the chain's clients: Pub/Sub, Compute Engine and the Kubernetes API.
///
/// # Errors
/// [`SetupError`] when a client cannot be built. A configuration without the Kubernetes API
/// is refused by [`chain_config_or_exit`] before this is reached; here it is
/// [`SetupError::NoKube`].
pub async fn connect_chain(config: Config, chain: ChainConfig) -> Result<ChainDeps, SetupError> {
    let settings = config.kube.clone().ok_or(SetupError::NoKube)?;
    let base = Deps::connect(config).await?;
    let compute = base.compute().await?;
    let kube = Deps::kube(&settings).await?;
    Ok(ChainDeps::new(base, compute, kube, chain))
}

/// A routing function that only publishes (`instance-events`).
///
/// # Errors
/// [`SetupError`] when the Pub/Sub client cannot be built.
pub async fn router(binary: &str) -> Result<Deps, SetupError> {
    let (config, _) = service_config_or_exit(binary, ServiceKind::Router);
    crate::telemetry::init(&config);
    Deps::connect(config).await
}

/// A routing function that locates VMs behind Nodes (`node-events`): Compute Engine and, when
/// configured, the Kubernetes API (a Node's providerID answers without a VM list).
///
/// # Errors
/// [`SetupError`] when a client cannot be built.
pub async fn node_router(
    binary: &str,
) -> Result<(Deps, Arc<dyn Locator>, Option<crate::act::k8s::Kube>), SetupError> {
    let (config, _) = service_config_or_exit(binary, ServiceKind::NodeRouter);
    crate::telemetry::init(&config);
    let base = Deps::connect(config).await?;
    let compute = base.compute().await?;
    let kube = match &base.config.kube {
        Some(k) => Some(Deps::kube(k).await?),
        None => None,
    };
    // Metadata mode: the same client decides the kubelets' bootstrap CSRs; it must exist.
    let csrs = match base.config.join_mode {
        crate::config::JoinMode::Metadata => Some(kube.clone().ok_or(SetupError::NoKube)?),
        crate::config::JoinMode::Pull => None,
    };
    let locator: Arc<dyn Locator> = Arc::new(ClusterLocator {
        kube,
        compute: Some(compute),
    });
    Ok((base, locator, csrs))
}

/// A step function or the drift sweep: everything.
///
/// # Errors
/// [`SetupError`] when a client cannot be built.
pub async fn chain(binary: &str) -> Result<ChainDeps, SetupError> {
    let (config, chain) = service_config_or_exit(binary, ServiceKind::Chain);
    let Some(chain) = chain else {
        exit_config(binary, &"the chain's configuration is missing");
    };
    crate::telemetry::init(&config);
    connect_chain(config, chain).await
}
