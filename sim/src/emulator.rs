//! The Google Cloud Pub/Sub emulator as a child process, for tests and the local sandbox: start
//! it on a free loopback port, wait until it answers, administer topics and subscriptions over
//! its REST API, stop it (the process is killed when the handle is dropped).
//!
//! The emulator's own launcher (`<sdk>/platform/pubsub-emulator/bin/cloud-pubsub-emulator`) is
//! started rather than `gcloud beta emulators pubsub start`: the gcloud wrapper leaves the Java
//! process running when it is terminated.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Environment variable that names the launcher explicitly (skips the SDK lookup).
pub const LAUNCHER_VAR: &str = "NODEWIRE_PUBSUB_EMULATOR";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the emulator could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(
        "the Pub/Sub emulator launcher was not found ({0}); install the Cloud SDK component \
         'pubsub-emulator' (Debian package google-cloud-cli-pubsub-emulator) or set {LAUNCHER_VAR}"
    )]
    NotInstalled(String),
    #[error("starting the Pub/Sub emulator failed: {0}")]
    Start(String),
    #[error(
        "the Pub/Sub emulator did not answer within {timeout:?}; its log ends with:\n{log_tail}"
    )]
    NotReady { timeout: Duration, log_tail: String },
    #[error("emulator request {what} failed: {reason}")]
    Request { what: String, reason: String },
}

/// Finds the emulator launcher: `$NODEWIRE_PUBSUB_EMULATOR`, the usual SDK locations, then the
/// SDK root that `gcloud info` reports.
pub fn find_launcher() -> Result<PathBuf, EmulatorError> {
    const REL: &str = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";
    if let Ok(p) = std::env::var(LAUNCHER_VAR) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(EmulatorError::NotInstalled(format!(
                "{LAUNCHER_VAR}={} is not a file",
                p.display()
            )))
        };
    }
    for root in [
        "/usr/lib/google-cloud-sdk",
        "/usr/share/google-cloud-sdk",
        "/opt/google-cloud-sdk",
    ] {
        let p = Path::new(root).join(REL);
        if p.is_file() {
            return Ok(p);
        }
    }
    let out = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| EmulatorError::NotInstalled(format!("gcloud: {e}")))?;
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = Path::new(&root).join(REL);
    if !root.is_empty() && p.is_file() {
        Ok(p)
    } else {
        Err(EmulatorError::NotInstalled(format!(
            "not under SDK root {root:?}"
        )))
    }
}

/// True when a launcher can be found (the sandbox uses this to choose its bus).
pub fn is_installed() -> bool {
    find_launcher().is_ok()
}

fn free_port() -> Result<u16, EmulatorError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| EmulatorError::Start(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| EmulatorError::Start(e.to_string()))
}

/// A running emulator. Dropping it kills the process.
#[derive(Debug)]
pub struct Emulator {
    child: Child,
    port: u16,
    project: String,
    log_path: PathBuf,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts the emulator on a free `127.0.0.1` port for `project` and waits until it serves.
    ///
    /// # Errors
    /// [`EmulatorError`] when it is not installed, does not start, or does not answer in time.
    pub async fn start(project: &str) -> Result<Self, EmulatorError> {
        let launcher = find_launcher()?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("nodewire-pubsub-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| EmulatorError::Start(e.to_string()))?;
        let log_path = dir.join("emulator.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| EmulatorError::Start(e.to_string()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| EmulatorError::Start(e.to_string()))?;
        let mut cmd = Command::new(&launcher);
        cmd.arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .env("CLOUDSDK_CORE_PROJECT", project)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            // Its own process group: a Ctrl-C meant for the test runner does not reach it
            // half-way, and the handle decides when it stops.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| EmulatorError::Start(format!("{}: {e}", launcher.display())))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EmulatorError::Start(e.to_string()))?;
        let mut emu = Emulator {
            child,
            port,
            project: project.to_string(),
            log_path,
            http,
        };
        emu.wait_ready().await?;
        Ok(emu)
    }

    async fn wait_ready(&mut self) -> Result<(), EmulatorError> {
        let url = format!("{}/v1/projects/{}/topics", self.endpoint(), self.project);
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EmulatorError::Start(format!(
                    "the emulator exited with {status}; log:\n{}",
                    self.log_tail()
                )));
            }
            if let Ok(r) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(EmulatorError::NotReady {
            timeout: READY_TIMEOUT,
            log_tail: self.log_tail(),
        })
    }

    /// The last lines of the emulator's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `127.0.0.1:PORT`, the value for `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// `projects/P/topics/ID`.
    pub fn topic_name(&self, id: &str) -> String {
        format!("projects/{}/topics/{id}", self.project)
    }

    /// `projects/P/subscriptions/ID`.
    pub fn subscription_name(&self, id: &str) -> String {
        format!("projects/{}/subscriptions/{id}", self.project)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, EmulatorError> {
        let url = format!("{}/v1/{path}", self.endpoint());
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let fail = |reason: String| EmulatorError::Request {
            what: format!("{method} {path}"),
            reason,
        };
        let resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!("{status}: {text}")));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    /// Creates a topic (full name or id).
    ///
    /// # Errors
    /// [`EmulatorError::Request`] on any non-2xx answer.
    pub async fn create_topic(&self, topic: &str) -> Result<(), EmulatorError> {
        let name = self.full(topic, "topics");
        self.call(reqwest::Method::PUT, &name, Some(json!({})))
            .await
            .map(|_| ())
    }

    /// Creates a subscription from a REST `Subscription` body (the `topic` is filled in).
    ///
    /// # Errors
    /// [`EmulatorError::Request`] on any non-2xx answer.
    pub async fn create_subscription(
        &self,
        subscription: &str,
        topic: &str,
        mut body: Value,
    ) -> Result<(), EmulatorError> {
        let name = self.full(subscription, "subscriptions");
        body["topic"] = Value::from(self.full(topic, "topics"));
        self.call(reqwest::Method::PUT, &name, Some(body))
            .await
            .map(|_| ())
    }

    /// Deletes a subscription (so the emulator stops pushing to a server that is gone).
    ///
    /// # Errors
    /// [`EmulatorError::Request`] on any non-2xx answer.
    pub async fn delete_subscription(&self, subscription: &str) -> Result<(), EmulatorError> {
        let name = self.full(subscription, "subscriptions");
        self.call(reqwest::Method::DELETE, &name, None)
            .await
            .map(|_| ())
    }

    /// Publishes one message over REST; returns its id.
    ///
    /// # Errors
    /// [`EmulatorError::Request`] on any non-2xx answer.
    pub async fn publish(
        &self,
        topic: &str,
        data: &[u8],
        attributes: &[(&str, &str)],
    ) -> Result<String, EmulatorError> {
        let name = self.full(topic, "topics");
        let attrs: serde_json::Map<String, Value> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
            .collect();
        let body = json!({"messages": [{
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attrs,
        }]});
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("{name}:publish"),
                Some(body),
            )
            .await?;
        Ok(v["messageIds"][0].as_str().unwrap_or_default().to_string())
    }

    /// Pulls up to `max` messages without waiting and acknowledges them.
    ///
    /// # Errors
    /// [`EmulatorError::Request`] on any non-2xx answer.
    pub async fn pull(
        &self,
        subscription: &str,
        max: u32,
    ) -> Result<Vec<PulledMessage>, EmulatorError> {
        let name = self.full(subscription, "subscriptions");
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("{name}:pull"),
                Some(json!({"maxMessages": max, "returnImmediately": true})),
            )
            .await?;
        let mut out = Vec::new();
        let mut ack_ids = Vec::new();
        for rm in v["receivedMessages"].as_array().into_iter().flatten() {
            let m = &rm["message"];
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["data"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let attributes = m["attributes"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(PulledMessage {
                message_id: m["messageId"].as_str().unwrap_or_default().to_string(),
                data,
                attributes,
                ordering_key: m["orderingKey"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            });
            if let Some(id) = rm["ackId"].as_str() {
                ack_ids.push(id.to_string());
            }
        }
        if !ack_ids.is_empty() {
            self.call(
                reqwest::Method::POST,
                &format!("{name}:acknowledge"),
                Some(json!({"ackIds": ack_ids})),
            )
            .await?;
        }
        Ok(out)
    }

    fn full(&self, name: &str, kind: &str) -> String {
        if name.starts_with("projects/") {
            name.to_string()
        } else {
            format!("projects/{}/{kind}/{name}", self.project)
        }
    }

    /// Stops the emulator.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A message pulled from a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledMessage {
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub ordering_key: Option<String>,
}
