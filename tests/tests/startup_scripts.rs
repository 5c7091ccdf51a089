//! The VM startup scripts (`infra/startup/`) run for real under bash, each in a temporary
//! root (`NODEWIRE_ROOT`), against a fake GCE metadata server on loopback and with stub
//! executables on `PATH` (kubeadm, kubectl, systemctl, apt-get, gcloud, …) that log their
//! arguments. The real curl talks to the fake metadata server; the curl stub forwards to it
//! any URL on 127.0.0.1 and fakes the rest, so no traffic leaves the machine.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, PoisonError};

const JOIN_A: &str = "# Written by nodewire for this VM only; the token expires shortly.\n\
apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    \
apiServerEndpoint: \"10.122.16.2:6443\"\n    token: \"aaaaaa.token-A-secret00\"\n    \
caCertHashes:\n      - \"sha256:9b2e\"\nnodeRegistration:\n  name: \"k8s-worker-1\"\n  \
taints:\n    - key: \"nodewire.io/unwired\"\n      effect: \"NoSchedule\"\n\n";
/// A pull-mode answer's JoinConfiguration (file discovery) and discovery kubeconfig.
const PULL_JOIN: &str = "# Written by nodewire for this VM only.\n\
apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  file:\n    \
kubeConfigPath: \"/etc/kubernetes/nodewire-discovery.conf\"\nnodeRegistration:\n  \
name: \"k8s-worker-1\"\n";
const PULL_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n  - name: \"kubernetes\"\n\
    cluster:\n      server: \"https://10.122.16.2:6443\"\n      certificate-authority-data: \"Q0E=\"\n\
users:\n  - name: \"system:node:k8s-worker-1\"\n    user:\n      client-certificate-data: \"Q0VSVA==\"\n\
      client-key: \"/var/lib/nodewire/startup/bootstrap-client.key\"\n\
current-context: \"nodewire-bootstrap\"\n";
const NODE_CONFIG: &str = r#"{"kubernetes_version": "1.33.5", "cluster_name": "demo"}"#;
const FAKE_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.FAKE-SA-TOKEN-7f3a9c";
const FAKE_JOIN_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.FAKE-JOIN-SA-TOKEN-0b1d2e";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn etag(v: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// One request the fake metadata server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    flavor: bool,
}

#[derive(Default)]
struct MdState {
    /// Path under /computeMetadata/v1/ → answers; the front one is popped while more follow.
    /// `None` is a 404.
    values: HashMap<String, VecDeque<Option<String>>>,
    log: Vec<Seen>,
    /// The only audience [`IDENTITY_PATH`] issues tokens for (`None`: no identity endpoint).
    identity_audience: Option<String>,
    /// The identity tokens issued, in order (each one new).
    issued: Vec<String>,
}

/// The metadata server's instance identity token endpoint (pull mode).
const IDENTITY_PATH: &str = "instance/service-accounts/default/identity";

/// A fake GCE metadata server: `Metadata-Flavor: Google` required (403 otherwise), 404 for
/// keys it does not have, an ETag on every value; `wait_for_change` is answered at once.
#[derive(Clone)]
struct FakeMetadata {
    url: String,
    state: Arc<Mutex<MdState>>,
}

impl FakeMetadata {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(MdState::default()));
        let s2 = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                std::thread::spawn(move || serve(conn, &s3));
            }
        });
        FakeMetadata {
            url: format!("http://127.0.0.1:{port}/computeMetadata/v1"),
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MdState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, path: &str, value: &str) {
        self.answers(path, &[Some(value)]);
    }

    fn answers(&self, path: &str, seq: &[Option<&str>]) {
        self.lock().values.insert(
            path.to_string(),
            seq.iter().map(|v| v.map(str::to_string)).collect(),
        );
    }

    fn log(&self) -> Vec<Seen> {
        self.lock().log.clone()
    }

    fn requests_of(&self, path: &str) -> Vec<Seen> {
        self.log().into_iter().filter(|s| s.path == path).collect()
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<MdState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let flavor = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("metadata-flavor") && v.trim() == "Google"
        })
    });
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path
        .strip_prefix("/computeMetadata/v1/")
        .unwrap_or(path)
        .to_string();
    let answer = {
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        st.log.push(Seen {
            path: path.clone(),
            query: query.to_string(),
            flavor,
        });
        if flavor && path == IDENTITY_PATH && st.identity_audience.is_some() {
            // A fresh token for exactly the configured audience, in format=full; 404 otherwise.
            let want = format!(
                "audience={}&format=full",
                st.identity_audience.clone().unwrap_or_default()
            );
            if query == want.as_str() {
                let token = format!(
                    "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJqb2luIn0.FAKE-ID-TOKEN-{}",
                    st.issued.len() + 1
                );
                st.issued.push(token.clone());
                Some(token)
            } else {
                None
            }
        } else if flavor {
            st.values.get_mut(&path).and_then(|q| {
                if q.len() > 1 {
                    q.pop_front().flatten()
                } else {
                    q.front().cloned().flatten()
                }
            })
        } else {
            None
        }
    };
    let resp = match (flavor, answer) {
        (false, _) => {
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
        (true, None) => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
        (true, Some(v)) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/text\r\nETag: {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{v}",
            etag(&v),
            v.len()
        ),
    };
    let _ = conn.write_all(resp.as_bytes());
}

/// What the fake join service saw of one request.
#[derive(Debug, Clone)]
struct JoinSeen {
    path: String,
    authorization: Option<String>,
    body: String,
}

#[derive(Default)]
struct JoinState {
    /// Answers of `POST /v1/join` (status, body); the front one is popped while more follow.
    join: VecDeque<(u16, String)>,
    seen: Vec<JoinSeen>,
}

/// A fake `join` service: `POST /v1/join` answers from its script, `POST /v1/joined` 202; a
/// request whose bearer token the fake metadata server did not issue is refused with 401, a
/// token used before with 409 (as the real service refuses a replay).
struct FakeJoin {
    url: String,
    state: Arc<Mutex<JoinState>>,
}

impl FakeJoin {
    fn start(md: &FakeMetadata, join: &[(u16, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(JoinState {
            join: join.iter().map(|(c, b)| (*c, (*b).to_string())).collect(),
            seen: Vec::new(),
        }));
        let s2 = state.clone();
        let md2 = md.state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                let md3 = md2.clone();
                std::thread::spawn(move || serve_join(conn, &s3, &md3));
            }
        });
        FakeJoin {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    fn seen(&self) -> Vec<JoinSeen> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seen
            .clone()
    }

    /// The Authorization headers of the requests to `path`.
    fn calls_to(&self, path: &str) -> Vec<Option<String>> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path)
            .map(|s| s.authorization)
            .collect()
    }
}

fn serve_join(mut conn: TcpStream, state: &Mutex<JoinState>, md: &Mutex<MdState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body_in = buf[head_end..].to_vec();
    while body_in.len() < length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body_in.extend_from_slice(&chunk[..n]),
        }
    }
    let body_in = String::from_utf8_lossy(&body_in).to_string();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_string();
    let mut parts = request.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let issued = md
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .issued
        .clone();
    let (status, body) = {
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        let used_before =
            authorization.is_some() && st.seen.iter().any(|s| s.authorization == authorization);
        st.seen.push(JoinSeen {
            path: path.clone(),
            authorization: authorization.clone(),
            body: body_in,
        });
        let token = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "));
        if method != "POST" {
            (405, "POST only\n".to_string())
        } else if !token.is_some_and(|t| issued.iter().any(|i| i == t)) {
            (401, "not an identity token of this VM\n".to_string())
        } else if used_before {
            (409, "this identity token was used already\n".to_string())
        } else if path == "/v1/join" {
            if st.join.len() > 1 {
                st.join.pop_front().unwrap_or((503, String::new()))
            } else {
                st.join
                    .front()
                    .cloned()
                    .unwrap_or((503, "no answer scripted\n".to_string()))
            }
        } else if path == "/v1/joined" {
            (202, "assign-alias published\n".to_string())
        } else {
            (404, "not found\n".to_string())
        }
    };
    let phrase = match status {
        200 => "OK",
        202 => "Accepted",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    let content_type = if status == 200 {
        "application/yaml"
    } else {
        "text/plain"
    };
    let retry_after = if status == 429 {
        "Retry-After: 0\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n{retry_after}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

/// A temporary root, the stubs' bin directory and their log.
struct Sandbox {
    dir: PathBuf,
    root: PathBuf,
    stub: PathBuf,
    md: FakeMetadata,
    env: Vec<(String, String)>,
}

const STUBS: &[(&str, &str)] = &[
    ("systemctl", ""),
    ("apt-get", ""),
    ("apt-mark", ""),
    ("modprobe", ""),
    ("sysctl", ""),
    (
        "gpg",
        r#"prev=""; for a in "$@"; do [[ $prev == -o ]] && cat > "$a"; prev=$a; done"#,
    ),
    (
        "kubeadm",
        r#"case "$1" in
join|init)
  cfg=""; prev=""
  for a in "$@"; do [[ $prev == --config ]] && cfg=$a; prev=$a; done
  n=$(find "$STUB_DIR" -name "kubeadm-$1-config.*" | wc -l)
  cp "$cfg" "$STUB_DIR/kubeadm-$1-config.$n"
  stat -c %a "$cfg" > "$STUB_DIR/kubeadm-$1-mode.$n"
  if [[ -n "${STUB_KUBEADM_FAIL_MATCH:-}" ]] && grep -q -- "$STUB_KUBEADM_FAIL_MATCH" "$cfg"; then
    echo "stub kubeadm: refusing" >&2; exit 1
  fi
  if (( n < ${STUB_KUBEADM_FAILS:-0} )); then echo "stub kubeadm: failing" >&2; exit 1; fi
  mkdir -p "$NODEWIRE_ROOT/etc/kubernetes/pki"
  disc="$NODEWIRE_ROOT/etc/kubernetes/nodewire-discovery.conf"
  if [[ $1 == join ]] && grep -q kubeConfigPath "$cfg" && [[ -f "$disc" ]]; then
    cp "$disc" "$STUB_DIR/kubeadm-discovery.$n"
    stat -c %a "$disc" > "$STUB_DIR/kubeadm-discovery-mode.$n"
    stat -c %a "$NODEWIRE_ROOT/var/lib/nodewire/startup/bootstrap-client.key" \
      > "$STUB_DIR/kubeadm-key-mode.$n"
  fi
  if [[ $1 == join ]]; then
    echo "kubelet kubeconfig" > "$NODEWIRE_ROOT/etc/kubernetes/kubelet.conf"
  else
    echo "admin kubeconfig" > "$NODEWIRE_ROOT/etc/kubernetes/admin.conf"
    printf -- '-----BEGIN CERTIFICATE-----\nMIIFAKECA\n-----END CERTIFICATE-----\n' \
      > "$NODEWIRE_ROOT/etc/kubernetes/pki/ca.crt"
  fi
  ;;
esac"#,
    ),
    (
        "kubectl",
        r#"case "$*" in
*" apply -f "*)
  n=$(find "$STUB_DIR" -name "applied.*" | wc -l)
  cp "${@: -1}" "$STUB_DIR/applied.$n"
  ;;
*" get node "*)
  n=$(cat "$STUB_DIR/get-node-calls" 2>/dev/null || echo 0)
  echo $((n + 1)) > "$STUB_DIR/get-node-calls"
  # The Node has no podCIDR at first.
  if (( n >= 1 )); then printf '%s' "$STUB_PODCIDR"; fi
  ;;
*" get secret nodewire-token "*)
  printf '%s' "$STUB_TOKEN" | base64 -w0
  ;;
*" get secret nodewire-join-token "*)
  printf '%s' "$STUB_JOIN_TOKEN" | base64 -w0
  ;;
*" get secrets --field-selector type=bootstrap.kubernetes.io/token "*)
  # kubeadm init's token (the Secret's name is the public token id).
  printf 'secret/bootstrap-token-abcdef\n'
  ;;
esac"#,
    ),
    (
        "gcloud",
        r#"secret=""
for a in "$@"; do case $a in --secret=*) secret=${a#--secret=};; esac; done
case "$*" in
"secrets versions access latest "*)
  [[ -f "$STUB_DIR/secret-$secret" ]] || { echo "NOT_FOUND" >&2; exit 1; }
  cat "$STUB_DIR/secret-$secret"
  ;;
"secrets versions add "*)
  cat > "$STUB_DIR/secret-$4"
  echo "Created version [1] of the secret [$4]." >&2
  ;;
esac"#,
    ),
    (
        "curl",
        r#"for a in "$@"; do case $a in http://127.0.0.1:*) exec "$REAL_CURL" "$@";; esac; done
for a in "$@"; do
  case $a in
  https://dl.google.com/*) cp "$STUB_DIR/../ops-agent-installer.sh" "${a##*/}";;
  *Release.key) echo "FAKE-KEY";;
  esac
done"#,
    ),
];

fn which(tool: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("bash");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!p.is_empty(), "{tool} is needed by this test");
    p
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nodewire-startup-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        let root = dir.join("root");
        let stub = dir.join("stub");
        let bin = dir.join("bin");
        for d in [&root, &stub, &bin] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        for (tool, body) in STUBS {
            let script =
                format!("#!/bin/bash\nprintf '%s\\n' \"{tool} $*\" >> \"$STUB_LOG\"\n{body}\n");
            let p = bin.join(tool);
            std::fs::write(&p, script).expect("write stub");
            chmod(&p, 0o755);
        }
        std::fs::write(
            dir.join("ops-agent-installer.sh"),
            "printf '%s\\n' \"ops-agent-installer $*\" >> \"$STUB_LOG\"\n",
        )
        .expect("write installer");
        let md = FakeMetadata::start();
        let env = vec![
            ("PATH".into(), format!("{}:/usr/bin:/bin", bin.display())),
            ("HOME".into(), dir.display().to_string()),
            ("NODEWIRE_ROOT".into(), root.display().to_string()),
            ("NODEWIRE_METADATA_URL".into(), md.url.clone()),
            ("NODEWIRE_RETRY_SLEEP".into(), "0".into()),
            ("NODEWIRE_MD_TIMEOUT_SEC".into(), "5".into()),
            ("NODEWIRE_MD_ATTEMPTS".into(), "3".into()),
            ("NODEWIRE_PODCIDR_ATTEMPTS".into(), "5".into()),
            ("NODEWIRE_TOKEN_ATTEMPTS".into(), "3".into()),
            ("NODEWIRE_JOIN_WAIT_MAX_SEC".into(), "30".into()),
            (
                "STUB_LOG".into(),
                dir.join("calls.log").display().to_string(),
            ),
            ("STUB_DIR".into(), stub.display().to_string()),
            ("STUB_PODCIDR".into(), "10.4.1.0/24".into()),
            ("STUB_TOKEN".into(), FAKE_TOKEN.into()),
            ("STUB_JOIN_TOKEN".into(), FAKE_JOIN_TOKEN.into()),
            ("REAL_CURL".into(), which("curl")),
        ];
        Sandbox {
            dir,
            root,
            stub,
            md,
            env,
        }
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    fn run(&self, script: &str) -> Output {
        self.run_path(&repo().join(script), &[])
    }

    /// `bash SCRIPT ARGS…`, SCRIPT an absolute path (e.g. a copy the script installed).
    fn run_path(&self, script: &Path, args: &[&str]) -> Output {
        let out = Command::new("bash")
            .arg(script)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.dir)
            .output()
            .expect("run bash");
        eprintln!(
            "--- {} {args:?} exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            script.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run_ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(out.status.success(), "{script} failed: {:?}", out.status);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn calls_starting(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.dir.join("calls.log"));
    }

    fn file(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn stub_files(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.stub)
            .expect("stub dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort_by_key(|n| {
            n.rsplit('.')
                .next()
                .and_then(|i| i.parse::<u32>().ok())
                .unwrap_or(0)
        });
        names.iter().map(|n| read(self.stub.join(n))).collect()
    }

    /// Every request carried `Metadata-Flavor: Google`.
    fn assert_flavor_everywhere(&self) {
        let log = self.md.log();
        assert!(!log.is_empty(), "the script read its metadata");
        assert!(
            log.iter().all(|s| s.flavor),
            "a request without Metadata-Flavor: {log:?}"
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

fn node_sandbox(name: &str) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.md
        .set("instance/attributes/nodewire-node-config", NODE_CONFIG);
    sb.md.set("instance/name", "k8s-worker-1");
    // Metadata mode unless a test says otherwise ([`pull_mode`]); absent means pull.
    sb.md
        .set("instance/attributes/nodewire-join-mode", "metadata");
    // The guest agent's file as an image may ship it: aliases on.
    let cfg = sb.file("/etc/default/instance_configs.cfg");
    std::fs::create_dir_all(cfg.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &cfg,
        "[Accounts]\ndeprovision_remove = false\n\n[IpForwarding]\nip_aliases = true\n\
         target_instance_ips = true\n",
    )
    .expect("write cfg");
    sb
}

fn assert_cni(sb: &Sandbox, cidr: &str) {
    let conf = read(sb.file("/etc/cni/net.d/10-nodewire-bridge.conflist"));
    let v: serde_json::Value = serde_json::from_str(&conf).expect("the conflist is JSON");
    assert_eq!(v["cniVersion"], "1.0.0");
    let bridge = &v["plugins"][0];
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], "cni0");
    assert_eq!(bridge["isGateway"], true);
    assert_eq!(bridge["ipMasq"], false);
    assert_eq!(bridge["hairpinMode"], true);
    assert_eq!(bridge["ipam"]["type"], "host-local");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], cidr);
    assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(v["plugins"][1]["type"], "portmap");
    assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
}

fn assert_base_install(sb: &Sandbox) {
    let cfg = read(sb.file("/etc/default/instance_configs.cfg"));
    assert!(
        cfg.contains("[IpForwarding]\nip_aliases = false\n"),
        "{cfg}"
    );
    assert!(!cfg.contains("ip_aliases = true"), "{cfg}");
    assert!(
        cfg.contains("[Accounts]\ndeprovision_remove = false\n"),
        "other settings kept"
    );
    assert!(
        cfg.contains("target_instance_ips = true"),
        "other settings kept"
    );
    assert_eq!(cfg.matches("ip_aliases").count(), 1, "{cfg}");
    let containerd = read(sb.file("/etc/containerd/config.toml"));
    assert!(containerd.contains("SystemdCgroup = true"), "{containerd}");
    assert!(
        containerd.contains("bin_dir = \"/usr/lib/cni\""),
        "{containerd}"
    );
    let sources = read(sb.file("/etc/apt/sources.list.d/kubernetes.list"));
    assert_eq!(
        sources,
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] \
         https://pkgs.k8s.io/core:/stable:/v1.33/deb/ /\n"
    );
    assert_eq!(
        read(sb.file("/etc/apt/keyrings/kubernetes-apt-keyring.gpg")),
        "FAKE-KEY\n"
    );
    assert!(read(sb.file("/etc/modules-load.d/nodewire-k8s.conf")).contains("br_netfilter"));
    let sysctl = read(sb.file("/etc/sysctl.d/99-nodewire-k8s.conf"));
    assert!(sysctl.contains("net.ipv4.ip_forward = 1"), "{sysctl}");
    assert!(
        sysctl.contains("net.bridge.bridge-nf-call-iptables = 1"),
        "{sysctl}"
    );
    let calls = sb.calls();
    for want in [
        "systemctl restart google-guest-agent",
        "modprobe overlay",
        "modprobe br_netfilter",
        "systemctl restart containerd",
        "apt-mark hold kubelet kubeadm kubectl",
    ] {
        assert!(
            calls.iter().any(|c| c == want),
            "{want:?} not in {calls:#?}"
        );
    }
    let install = sb.calls_starting("apt-get install");
    assert!(
        install
            .iter()
            .any(|c| c.contains(" containernetworking-plugins ")),
        "{install:?}"
    );
    // openssl makes the pull-mode join's key pair and certificate request.
    assert!(
        install.iter().any(|c| c.contains(" openssl ")),
        "{install:?}"
    );
    // containerd 1.7 from Docker's repository: Debian 12's 1.6 is not supported for
    // Kubernetes 1.33 (containerd's RELEASES.md, "Kubernetes support").
    assert!(
        install.iter().any(|c| c.ends_with(" containerd.io=1.7.*")),
        "{install:?}"
    );
    assert!(
        calls.iter().any(|c| c == "apt-mark hold containerd.io"),
        "{calls:#?}"
    );
    let docker_list = read(sb.file("/etc/apt/sources.list.d/docker.list"));
    assert!(
        docker_list.contains("https://download.docker.com/linux/debian bookworm stable"),
        "{docker_list}"
    );
    assert!(
        install
            .iter()
            .any(|c| c.contains("kubelet=1.33.5-* kubeadm=1.33.5-* kubectl=1.33.5-*")),
        "{install:?}"
    );
}

#[test]
fn node_script_installs_waits_joins_with_retry_and_writes_cni() {
    let sb = node_sandbox("node").with("STUB_KUBEADM_FAILS", "1");
    // Not there at first: the script waits for nodewire's bootstrap step.
    sb.md.answers(
        "instance/attributes/kubeadm-join",
        &[None, None, Some(JOIN_A)],
    );
    sb.run_ok("infra/startup/node.sh");
    sb.assert_flavor_everywhere();
    assert!(
        !sb.md
            .requests_of("instance/attributes/nodewire-node-config")
            .is_empty()
    );
    assert!(!sb.md.requests_of("instance/name").is_empty());
    assert!(sb.md.requests_of("instance/attributes/kubeadm-join").len() >= 3);
    assert_base_install(&sb);

    // Joined on the second try, with exactly the metadata value, from a 0600 file, after a
    // reset; the file is gone.
    let joins = sb.calls_starting("kubeadm join");
    assert_eq!(
        joins,
        vec![
            "kubeadm join --config ".to_string()
                + &sb
                    .file("/etc/kubernetes/nodewire-join.yaml")
                    .display()
                    .to_string();
            2
        ]
    );
    let kubeadm = sb.calls_starting("kubeadm");
    assert_eq!(kubeadm[1], "kubeadm reset -f", "{kubeadm:?}");
    let configs = sb.stub_files("kubeadm-join-config.");
    assert_eq!(configs, vec![JOIN_A.to_string(); 2]);
    assert_eq!(
        sb.stub_files("kubeadm-join-mode."),
        vec!["600\n".to_string(); 2]
    );
    assert!(!sb.file("/etc/kubernetes/nodewire-join.yaml").exists());

    // The watcher and its unit, byte for byte the shipped files.
    let watcher = sb.file("/usr/local/sbin/nodewire-kubelet-restart-watcher");
    assert_eq!(
        read(&watcher),
        read(repo().join("infra/startup/kubelet-restart-watcher"))
    );
    assert_eq!(mode(&watcher), 0o755);
    let unit = read(sb.file("/etc/systemd/system/nodewire-kubelet-restart.service"));
    assert_eq!(
        unit,
        read(repo().join("infra/startup/nodewire-kubelet-restart.service"))
    );
    assert!(unit.contains("ExecStart=/usr/local/sbin/nodewire-kubelet-restart-watcher\n"));
    let calls = sb.calls();
    assert!(calls.contains(&"systemctl enable nodewire-kubelet-restart.service".to_string()));
    assert!(calls.contains(&"systemctl daemon-reload".to_string()));

    // The podCIDR was read with the kubelet's credentials, retried until set.
    let gets = sb.calls_starting("kubectl");
    let kubelet_conf = sb
        .file("/etc/kubernetes/kubelet.conf")
        .display()
        .to_string();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(
        gets[0],
        format!(
            "kubectl --kubeconfig {kubelet_conf} get node k8s-worker-1 -o jsonpath={{.spec.podCIDR}}"
        )
    );
    assert_cni(&sb, "10.4.1.0/24");

    // A reboot: joined before, so no join, no package install, no guest agent restart.
    sb.clear_calls();
    let _ = std::fs::remove_file(sb.stub.join("get-node-calls"));
    sb.run_ok("infra/startup/node.sh");
    assert!(sb.calls_starting("kubeadm").is_empty(), "{:?}", sb.calls());
    assert!(sb.calls_starting("apt-get").is_empty(), "{:?}", sb.calls());
    assert!(
        !sb.calls()
            .contains(&"systemctl restart google-guest-agent".to_string())
    );
    assert_cni(&sb, "10.4.1.0/24");
}

#[test]
fn node_script_does_not_join_when_kubelet_conf_exists() {
    let sb = node_sandbox("joined").with("STUB_PODCIDR", "10.4.7.0/24");
    sb.md.set("instance/attributes/kubeadm-join", JOIN_A);
    let kubelet_conf = sb.file("/etc/kubernetes/kubelet.conf");
    std::fs::create_dir_all(kubelet_conf.parent().expect("parent")).expect("mkdir");
    std::fs::write(&kubelet_conf, "kubeconfig").expect("write");
    sb.run_ok("infra/startup/node.sh");
    assert!(sb.calls_starting("kubeadm").is_empty(), "{:?}", sb.calls());
    assert!(
        sb.md
            .requests_of("instance/attributes/kubeadm-join")
            .is_empty()
    );
    assert_cni(&sb, "10.4.7.0/24");
}

#[test]
fn node_script_drops_a_failing_config_and_joins_with_the_next() {
    let sb = node_sandbox("remint")
        .with("STUB_KUBEADM_FAIL_MATCH", "token-A")
        .with("NODEWIRE_JOIN_ATTEMPTS", "2");
    let join_b = JOIN_A.replace("token-A", "token-B");
    sb.md.answers(
        "instance/attributes/kubeadm-join",
        &[Some(JOIN_A), Some(&join_b)],
    );
    sb.run_ok("infra/startup/node.sh");
    let configs = sb.stub_files("kubeadm-join-config.");
    assert_eq!(
        configs,
        vec![JOIN_A.to_string(), JOIN_A.to_string(), join_b.clone()]
    );
    let reqs = sb.md.requests_of("instance/attributes/kubeadm-join");
    assert_eq!(reqs[0].query, "", "a plain read first");
    assert_eq!(
        reqs[1].query,
        format!(
            "wait_for_change=true&timeout_sec=5&last_etag={}",
            etag(JOIN_A)
        )
    );
    assert!(!sb.file("/etc/kubernetes/nodewire-join.yaml").exists());
}

/// Pull mode: the node asks `join` (its URL in metadata) with identity tokens for that URL.
fn pull_mode(sb: &Sandbox, join: &FakeJoin) {
    sb.md.set("instance/attributes/nodewire-join-mode", "pull");
    sb.md
        .set("instance/attributes/nodewire-join-url", &join.url);
    sb.md.lock().identity_audience = Some(join.url.clone());
}

#[test]
fn node_script_pull_mode_joins_with_identity_tokens_and_reports() {
    let sb = node_sandbox("pull").with("NODEWIRE_JOINED_RETRY_SLEEP", "0");
    // Rate-limited first (Retry-After: 0), then the configuration.
    let answer = format!("{PULL_KUBECONFIG}---\n{PULL_JOIN}");
    let join = FakeJoin::start(&sb.md, &[(429, "slow down\n"), (200, answer.as_str())]);
    pull_mode(&sb, &join);
    let output = sb.run_ok("infra/startup/node.sh");
    sb.assert_flavor_everywhere();
    assert_base_install(&sb);

    // Nothing was read from kubeadm-join: the configuration came from the join service.
    assert!(
        sb.md
            .requests_of("instance/attributes/kubeadm-join")
            .is_empty()
    );
    // Every identity token was asked for with exactly the join URL as audience.
    let identity = sb.md.requests_of(IDENTITY_PATH);
    assert!(!identity.is_empty());
    for r in &identity {
        assert_eq!(r.query, format!("audience={}&format=full", join.url));
    }
    let issued = sb.md.lock().issued.clone();
    assert_eq!(issued.len(), 3, "two for /v1/join, one for /v1/joined");

    // kubeadm joined once with exactly the service's answer, from a 0600 file, now gone.
    let joins = sb.calls_starting("kubeadm join");
    assert_eq!(
        joins,
        vec![
            "kubeadm join --config ".to_string()
                + &sb
                    .file("/etc/kubernetes/nodewire-join.yaml")
                    .display()
                    .to_string()
        ]
    );
    assert_eq!(
        sb.stub_files("kubeadm-join-config."),
        vec![PULL_JOIN.to_string()]
    );
    assert_eq!(
        sb.stub_files("kubeadm-join-mode."),
        vec!["600\n".to_string()]
    );
    // The discovery kubeconfig was where the JoinConfiguration names it, 0600, with the key it
    // names beside it (0600) while kubeadm ran; all gone now.
    assert_eq!(
        sb.stub_files("kubeadm-discovery."),
        vec![PULL_KUBECONFIG.to_string()]
    );
    assert_eq!(
        sb.stub_files("kubeadm-discovery-mode."),
        vec!["600\n".to_string()]
    );
    assert_eq!(
        sb.stub_files("kubeadm-key-mode."),
        vec!["600\n".to_string()]
    );
    for f in [
        "/etc/kubernetes/nodewire-join.yaml",
        "/etc/kubernetes/nodewire-discovery.conf",
        "/var/lib/nodewire/startup/bootstrap-client.key",
        "/var/lib/nodewire/startup/bootstrap-client.csr",
    ] {
        assert!(!sb.file(f).exists(), "{f} is left");
    }
    // Each /v1/join carried the same certificate request, for this VM's own Node name, that
    // the join service's checks accept (openssl's request as the script makes it); no key.
    let requests: Vec<String> = join
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/join")
        .map(|s| s.body)
        .collect();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0], requests[1]);
    let checked = nodewire::join::csr::check(&requests[0], "k8s-worker-1")
        .unwrap_or_else(|e| panic!("the script's request is refused: {e}\n{}", requests[0]));
    assert_eq!(checked.key, nodewire::join::csr::KeyKind::EcdsaP256);
    assert!(!requests[0].contains("PRIVATE KEY"));
    for f in ["identity-token", "join-auth-header"] {
        assert!(
            !sb.file(&format!("/var/lib/nodewire/startup/{f}")).exists(),
            "{f}"
        );
    }

    // /v1/join twice (the 429, then 200), /v1/joined once; each with its own issued token.
    let to_join = join.calls_to("/v1/join");
    let to_joined = join.calls_to("/v1/joined");
    assert_eq!(to_join.len(), 2, "{:?}", join.seen());
    assert_eq!(to_joined.len(), 1, "{:?}", join.seen());
    let mut bearers: Vec<String> = Vec::new();
    for a in to_join.iter().chain(to_joined.iter()) {
        let token = a
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("no bearer token: {a:?}"));
        assert!(issued.iter().any(|i| i == token), "{token} was not issued");
        assert!(!bearers.contains(&token.to_string()), "a token used twice");
        bearers.push(token.to_string());
    }

    // No identity token and no bootstrap token in the output or in any command line.
    let calls = sb.calls().join("\n");
    for secret in issued
        .iter()
        .map(String::as_str)
        .chain(["FAKE-ID-TOKEN", "token-A-secret00"])
    {
        assert!(
            !output.contains(secret),
            "{secret} is in the script's output"
        );
        assert!(!calls.contains(secret), "{secret} is in an argv");
    }
    assert_cni(&sb, "10.4.1.0/24");
}

#[test]
fn node_script_pull_mode_stops_on_403_without_kubeadm() {
    let sb = node_sandbox("pull403");
    let join = FakeJoin::start(
        &sb.md,
        &[(403, "instance k8s-worker-1 is not on the node subnet\n")],
    );
    pull_mode(&sb, &join);
    // Without nodewire-join-mode the script is in pull mode.
    sb.md
        .lock()
        .values
        .remove("instance/attributes/nodewire-join-mode");
    let out = sb.run("infra/startup/node.sh");
    assert!(!out.status.success(), "a 403 must stop the script");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("HTTP 403"), "{log}");
    assert!(
        log.contains("instance k8s-worker-1 is not on the node subnet"),
        "{log}"
    );
    assert!(sb.calls_starting("kubeadm").is_empty(), "{:?}", sb.calls());
    assert_eq!(join.calls_to("/v1/join").len(), 1, "{:?}", join.seen());
    assert!(join.calls_to("/v1/joined").is_empty());
    assert!(!sb.file("/etc/kubernetes/nodewire-join.yaml").exists());
    let issued = sb.md.lock().issued.clone();
    assert_eq!(issued.len(), 1);
    assert!(
        !log.contains(&issued[0]),
        "the identity token is in the output"
    );
}

#[test]
fn node_script_fails_without_its_configuration() {
    let sb = Sandbox::new("noconfig");
    sb.md.set("instance/name", "k8s-worker-1");
    let out = sb.run("infra/startup/node.sh");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nodewire-node-config is missing"));
    assert!(sb.calls_starting("apt-get").is_empty());
}

fn cluster_config() -> String {
    r#"{"pod_range": "192.168.16.0/21", "service_range": "172.16.16.0/21",
  "pod_range_name": "pods", "cluster_name": "demo", "kubernetes_version": "1.33.5",
  "advertise_address": "10.122.16.2", "audit_log_name": "k8s_audit",
  "kube_token_secret": "nodewire-kube-token", "kube_ca_secret": "nodewire-kube-ca",
  "kube_join_token_secret": "nodewire-kube-join-token", "join_mode": "pull",
  "non_masquerade_cidrs": "10.122.16.0/21,192.168.16.0/21,172.16.16.0/21,10.200.0.0/16"}"#
        .to_string()
}

/// [`cluster_config`] in the alias-first order.
fn alias_first_config() -> String {
    cluster_config().replace(
        "\"join_mode\": \"pull\"",
        "\"join_mode\": \"pull\", \"range_order\": \"alias-first\"",
    )
}

/// [`control_plane_sandbox`] whose VM has the /24 Compute Engine allocated on its nic0.
fn alias_first_sandbox(name: &str, config: &str) -> Sandbox {
    let sb = control_plane_sandbox(name, config);
    sb.md.set(
        "instance/network-interfaces/0/ip-aliases/0",
        "192.168.19.0/24",
    );
    sb
}

/// A control-plane VM's metadata as Terraform writes it, with `config` as its cluster config.
fn control_plane_sandbox(name: &str, config: &str) -> Sandbox {
    let sb = Sandbox::new(name).with("STUB_PODCIDR", "192.168.16.0/24");
    for (k, f) in [
        ("nodewire-k8s-rbac", "infra/k8s/nodewire-rbac.yaml"),
        (
            "nodewire-k8s-policy",
            "infra/k8s/nodewire-admission-policy.yaml",
        ),
        ("nodewire-k8s-ip-masq", "infra/k8s/ip-masq-agent.yaml"),
        (
            "nodewire-k8s-rbac-metadata-mode",
            "infra/k8s/nodewire-rbac-metadata-mode.yaml",
        ),
        ("nodewire-audit-policy", "infra/k8s/node/audit-policy.yaml"),
    ] {
        sb.md
            .set(&format!("instance/attributes/{k}"), &read(repo().join(f)));
    }
    sb.md
        .set("instance/attributes/nodewire-cluster-config", config);
    sb.md.set("instance/name", "k8s-cp-1");
    sb.md
        .set("instance/zone", "projects/123456/zones/us-central1-a");
    sb.md.set("project/project-id", "example-project");
    sb
}

/// Issue 20, item 2: metadata mode's kubelets no longer need kubeadm's auto-approval (node-events
/// decides their CSRs), so the script deletes it in that mode too, keeps the timer that deletes
/// it again, and applies the role that lets node-events decide them; a join mode it does not
/// know stops it before kubeadm runs.
#[test]
fn control_plane_script_drops_the_autoapproval_in_metadata_mode_too() {
    let sb = control_plane_sandbox(
        "cp-md",
        &cluster_config().replace("\"join_mode\": \"pull\"", "\"join_mode\": \"metadata\""),
    );
    sb.run_ok("infra/startup/control-plane.sh");
    let calls = sb.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("kubeadm init ")),
        "{calls:#?}"
    );
    assert!(
        calls.iter().any(|c| c.ends_with(
            "delete clusterrolebinding kubeadm:node-autoapprove-bootstrap --ignore-not-found"
        )),
        "{calls:#?}"
    );
    assert!(
        sb.file("/etc/systemd/system/nodewire-no-autoapprove.timer")
            .exists()
    );
    let approver = read(repo().join("infra/k8s/nodewire-rbac-metadata-mode.yaml"));
    assert!(
        sb.stub_files("applied.").contains(&approver),
        "the metadata-mode role is applied: {calls:#?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("delete --ignore-not-found -f")),
        "{calls:#?}"
    );

    let sb = control_plane_sandbox(
        "cp-bad",
        &cluster_config().replace("\"join_mode\": \"pull\"", "\"join_mode\": \"push\""),
    );
    let out = sb.run("infra/startup/control-plane.sh");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"join_mode\" is malformed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sb.calls_starting("kubeadm").is_empty());
}

#[test]
fn control_plane_script_inits_ships_audit_applies_and_publishes() {
    let sb = Sandbox::new("cp").with("STUB_PODCIDR", "192.168.16.0/24");
    let manifests = [
        (
            "nodewire-k8s-rbac",
            read(repo().join("infra/k8s/nodewire-rbac.yaml")),
        ),
        (
            "nodewire-k8s-policy",
            read(repo().join("infra/k8s/nodewire-admission-policy.yaml")),
        ),
        (
            "nodewire-k8s-ip-masq",
            read(repo().join("infra/k8s/ip-masq-agent.yaml")),
        ),
    ];
    // Terraform writes the metadata-mode role in both modes; pull mode deletes it.
    sb.md.set(
        "instance/attributes/nodewire-k8s-rbac-metadata-mode",
        &read(repo().join("infra/k8s/nodewire-rbac-metadata-mode.yaml")),
    );
    let audit_policy = read(repo().join("infra/k8s/node/audit-policy.yaml"));
    sb.md.set(
        "instance/attributes/nodewire-cluster-config",
        &cluster_config(),
    );
    sb.md
        .set("instance/attributes/nodewire-audit-policy", &audit_policy);
    for (k, v) in &manifests {
        sb.md.set(&format!("instance/attributes/{k}"), v);
    }
    sb.md.set("instance/name", "k8s-cp-1");
    sb.md
        .set("instance/zone", "projects/123456/zones/us-central1-a");
    sb.md.set("project/project-id", "example-project");
    let cfg = sb.file("/etc/default/instance_configs.cfg");
    std::fs::create_dir_all(cfg.parent().expect("parent")).expect("mkdir");
    std::fs::write(&cfg, "[Accounts]\ndeprovision_remove = false\n\n[IpForwarding]\nip_aliases = true\ntarget_instance_ips = true\n").expect("write");

    let output = sb.run_ok("infra/startup/control-plane.sh");
    sb.assert_flavor_everywhere();
    assert_base_install(&sb);

    // kubeadm init with the ranges, node CIDR allocation and the audit flags.
    let inits = sb.stub_files("kubeadm-init-config.");
    assert_eq!(inits.len(), 1, "{:?}", sb.calls());
    let k = &inits[0];
    // Cluster-first: kube-proxy keeps kubeadm's default (the cluster CIDR).
    assert!(!k.contains("KubeProxyConfiguration"), "{k}");
    for want in [
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n",
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n",
        "  advertiseAddress: \"10.122.16.2\"\n",
        "  podSubnet: \"192.168.16.0/21\"\n",
        "  serviceSubnet: \"172.16.16.0/21\"\n",
        "kubernetesVersion: \"v1.33.5\"\n",
        "    - name: \"provider-id\"\n      value: \"gce://example-project/us-central1-a/k8s-cp-1\"\n",
        "controllerManager:\n  extraArgs:\n    - name: \"allocate-node-cidrs\"\n      value: \"true\"\n\
         \x20   - name: \"cluster-cidr\"\n      value: \"192.168.16.0/21\"\n\
         \x20   - name: \"node-cidr-mask-size\"\n      value: \"24\"\n",
        "    - name: \"audit-policy-file\"\n      value: \"/etc/kubernetes/audit-policy.yaml\"\n",
        "    - name: \"audit-log-path\"\n      value: \"/var/log/kubernetes/audit/audit.log\"\n",
        "    - name: \"audit-log-format\"\n      value: \"json\"\n",
        "    - name: \"audit-log-maxsize\"\n      value: \"100\"\n",
        "    - name: \"audit-log-maxbackup\"\n      value: \"5\"\n",
        "      hostPath: \"/etc/kubernetes/audit-policy.yaml\"\n",
        "      hostPath: \"/var/log/kubernetes/audit\"\n",
    ] {
        assert!(k.contains(want), "{want:?} not in\n{k}");
    }
    assert!(!k.contains("cloud-provider"), "{k}");
    assert_eq!(
        read(sb.file("/etc/kubernetes/audit-policy.yaml")),
        audit_policy
    );
    assert_eq!(mode(&sb.file("/etc/kubernetes/audit-policy.yaml")), 0o600);

    // The Ops Agent: installed by Google's repo script, shipping the audit log as k8s_audit.
    let calls = sb.calls();
    assert!(
        calls.iter().any(|c| c
            == "curl -sSO https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh")
    );
    assert!(
        calls.contains(&"ops-agent-installer --also-install".to_string()),
        "{calls:#?}"
    );
    assert!(calls.contains(&"systemctl restart google-cloud-ops-agent".to_string()));
    let ops = read(sb.file("/etc/google-cloud-ops-agent/config.yaml"));
    for want in [
        "  receivers:\n    k8s_audit:\n      type: files\n",
        "      include_paths: [/var/log/kubernetes/audit/audit.log]\n",
        "    k8s_audit_json:\n      type: parse_json\n",
        "      k8s_audit:\n        receivers: [k8s_audit]\n        processors: [k8s_audit_json]\n",
    ] {
        assert!(ops.contains(want), "{want:?} not in\n{ops}");
    }

    // kubeadm init prints no token, and the token it created is deleted (issue 20).
    let admin = sb.file("/etc/kubernetes/admin.conf").display().to_string();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("kubeadm init --config ") && c.ends_with(" --skip-token-print")),
        "{calls:#?}"
    );
    assert!(
        calls.contains(&format!(
            "kubectl --kubeconfig {admin} -n kube-system delete --ignore-not-found \
             secret/bootstrap-token-abcdef"
        )),
        "{calls:#?}"
    );
    assert!(!output.contains("abcdef."), "a token secret in the output");
    // Pull mode: no auto-approval of node certificates for bootstrap tokens.
    let drop_binding = format!(
        "kubectl --kubeconfig {admin} delete clusterrolebinding \
         kubeadm:node-autoapprove-bootstrap --ignore-not-found"
    );
    assert!(calls.contains(&drop_binding), "{calls:#?}");
    // ... and again every 5 minutes, since kubeadm upgrade recreates it.
    let unit = read(sb.file("/etc/systemd/system/nodewire-no-autoapprove.service"));
    assert!(
        unit.contains(
            "ExecStart=/usr/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf delete \
             clusterrolebinding kubeadm:node-autoapprove-bootstrap --ignore-not-found\n"
        ),
        "{unit}"
    );
    let timer = read(sb.file("/etc/systemd/system/nodewire-no-autoapprove.timer"));
    assert!(timer.contains("OnUnitActiveSec=5min\n"), "{timer}");
    assert!(
        calls.contains(&"systemctl enable --now nodewire-no-autoapprove.timer".to_string()),
        "{calls:#?}"
    );

    // Pull mode: the metadata-mode role is deleted, not applied.
    assert!(
        calls.iter().any(|c| c.starts_with(&format!(
            "kubectl --kubeconfig {admin} delete --ignore-not-found -f "
        )) && c
            .ends_with("/etc/kubernetes/nodewire/nodewire-k8s-rbac-metadata-mode.yaml")),
        "{calls:#?}"
    );
    // The three manifests, in order, then ip-masq-agent's ranges, then the two token Secrets.
    let applied = sb.stub_files("applied.");
    assert_eq!(applied.len(), 6, "{calls:#?}");
    for (i, (_, v)) in manifests.iter().enumerate() {
        assert_eq!(&applied[i], v);
    }
    assert!(
        applied[3].contains(
            "  name: ip-masq-agent\n  namespace: kube-system\ndata:\n  config: |\n    \
             nonMasqueradeCIDRs:\n      - 10.122.16.0/21\n      - 192.168.16.0/21\n      \
             - 172.16.16.0/21\n      - 10.200.0.0/16\n    masqLinkLocal: false\n"
        ),
        "{}",
        applied[3]
    );
    assert!(applied[4].contains("type: kubernetes.io/service-account-token"));
    assert!(applied[4].contains("kubernetes.io/service-account.name: nodewire"));
    assert!(applied[4].contains("name: nodewire-token\n  namespace: kube-system"));
    assert!(applied[5].contains("kubernetes.io/service-account.name: nodewire-join"));
    assert!(applied[5].contains("name: nodewire-join-token\n  namespace: kube-system"));
    assert!(
        calls.iter().all(|c| !c.starts_with("kubectl ")
            || c.starts_with(&format!("kubectl --kubeconfig {admin} ")))
    );

    // Secret Manager: the token and the CA, from stdin; the token is printed nowhere.
    assert!(
        calls.contains(&"gcloud secrets versions add nodewire-kube-token --data-file=-".into())
    );
    assert!(calls.contains(&"gcloud secrets versions add nodewire-kube-ca --data-file=-".into()));
    assert_eq!(read(sb.stub.join("secret-nodewire-kube-token")), FAKE_TOKEN);
    assert_eq!(
        read(sb.stub.join("secret-nodewire-kube-join-token")),
        FAKE_JOIN_TOKEN
    );
    assert_eq!(
        read(sb.stub.join("secret-nodewire-kube-ca")),
        read(sb.file("/etc/kubernetes/pki/ca.crt"))
    );
    let b64 = {
        let out = Command::new("bash")
            .args(["-c", &format!("printf '%s' '{FAKE_TOKEN}' | base64 -w0")])
            .output()
            .expect("base64");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(!b64.is_empty());
    for secret in [FAKE_TOKEN, FAKE_JOIN_TOKEN, &b64] {
        assert!(
            !output.contains(secret),
            "the token is in the script's output"
        );
        assert!(
            !calls.join("\n").contains(secret),
            "the token is in an argv"
        );
    }

    // Its own alias IP range and CNI configuration.
    assert!(
        calls.contains(
            &"gcloud compute instances network-interfaces update k8s-cp-1 --zone us-central1-a \
              --aliases pods:192.168.16.0/24"
                .to_string()
        ),
        "{calls:#?}"
    );
    assert_cni(&sb, "192.168.16.0/24");

    // Again (a reboot): no init, no new secret versions, the alias is in place already.
    sb.clear_calls();
    sb.md.set(
        "instance/network-interfaces/0/ip-aliases/0",
        "192.168.16.0/24",
    );
    let _ = std::fs::remove_file(sb.stub.join("get-node-calls"));
    sb.run_ok("infra/startup/control-plane.sh");
    let calls = sb.calls();
    assert!(sb.calls_starting("kubeadm").is_empty(), "{calls:#?}");
    assert!(
        calls.contains(&drop_binding),
        "the binding is deleted on every boot (kubeadm upgrade recreates it): {calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("bootstrap-token-")),
        "no token deletion without an init: {calls:#?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("gcloud secrets versions add")),
        "{calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("gcloud compute")),
        "{calls:#?}"
    );
    assert_eq!(
        sb.stub_files("applied.").len(),
        12,
        "manifests applied again (idempotent)"
    );
}

#[test]
fn kubelet_restart_watcher_restarts_once_per_new_value() {
    let sb = Sandbox::new("watcher").with("NODEWIRE_WATCH_MAX_POLLS", "8");
    let key = "instance/attributes/nodewire-restart-kubelet";
    sb.md.answers(
        key,
        &[
            None,
            Some("1@1700000000"),
            Some("1@1700000000"),
            Some("junk; rm -rf /"),
            Some("2@1700000300"),
            Some("2@1700000300"),
            Some("1@1700000000x"),
        ],
    );
    let out = sb.run_ok("infra/startup/kubelet-restart-watcher");
    assert_eq!(
        sb.calls_starting("systemctl"),
        vec!["systemctl restart kubelet".to_string(); 2],
        "{out}"
    );
    assert_eq!(
        read(sb.file("/var/lib/nodewire/kubelet-restart.seen")),
        "2@1700000300\n"
    );
    assert!(out.contains("malformed"), "{out}");
    let reqs = sb.md.requests_of(key);
    assert_eq!(reqs.len(), 8);
    assert_eq!(reqs[0].query, "");
    assert_eq!(reqs[1].query, "", "after a 404: a plain read");
    assert_eq!(
        reqs[2].query,
        format!(
            "wait_for_change=true&timeout_sec=300&last_etag={}",
            etag("1@1700000000")
        )
    );
    sb.assert_flavor_everywhere();

    // Started again (a reboot, a unit restart): the handled value restarts nothing.
    sb.clear_calls();
    sb.md.set(key, "2@1700000300");
    let sb = sb.with("NODEWIRE_WATCH_MAX_POLLS", "3");
    sb.run_ok("infra/startup/kubelet-restart-watcher");
    assert!(
        sb.calls_starting("systemctl").is_empty(),
        "{:?}",
        sb.calls()
    );
    // A new value does.
    sb.md.set(key, "3@1700000900");
    sb.run_ok("infra/startup/kubelet-restart-watcher");
    assert_eq!(
        sb.calls_starting("systemctl"),
        vec!["systemctl restart kubelet".to_string()]
    );
}

/// What a VM really runs: the deployment delivers `common.sh` and the script as one
/// startup-script (infra/terraform joins them with a newline; the deployment contract test
/// checks that), with no file beside it. That file works on its own; the script without the
/// library in front does not (nothing is silently missing).
#[test]
fn the_delivered_startup_script_is_the_library_then_the_script() {
    let lib = read(repo().join("infra/startup/common.sh"));
    assert!(lib.starts_with("#!/usr/bin/env bash\n"));
    for f in ["node.sh", "control-plane.sh", "kubelet-restart-watcher"] {
        assert!(read(repo().join("infra/startup").join(f)).starts_with("#!/usr/bin/env bash\n"));
    }
    let sb = node_sandbox("delivered").with("STUB_PODCIDR", "10.4.7.0/24");
    sb.md.set("instance/attributes/kubeadm-join", JOIN_A);
    let kubelet_conf = sb.file("/etc/kubernetes/kubelet.conf");
    std::fs::create_dir_all(kubelet_conf.parent().expect("parent")).expect("mkdir");
    std::fs::write(&kubelet_conf, "kubeconfig").expect("write");
    let delivered = sb.dir.join("delivered-startup-script");
    std::fs::write(
        &delivered,
        format!("{lib}\n{}", read(repo().join("infra/startup/node.sh"))),
    )
    .expect("write");
    sb.run_ok(&delivered.display().to_string());
    assert_cni(&sb, "10.4.7.0/24");
    let alone = sb.dir.join("script-without-library");
    std::fs::copy(repo().join("infra/startup/node.sh"), &alone).expect("copy");
    let out = sb.run(&alone.display().to_string());
    assert!(
        !out.status.success(),
        "node.sh without common.sh must not run"
    );
}

/// Issue 22, the alias-first order: kube-controller-manager allocates no podCIDR
/// (`--allocate-node-cidrs=false`), the control plane takes the /24 Compute Engine gave its
/// VM (here already on its nic0) and sets its own Node's empty podCIDR to it, then writes the
/// CNI configuration for it; it never asks for a second range. Without an alias it asks
/// Compute Engine for one by size (`pods:/24`) and stops when none appears.
#[test]
fn control_plane_script_in_the_alias_first_order() {
    let config = alias_first_config();
    let sb = alias_first_sandbox("cp-af", &config);
    sb.run_ok("infra/startup/control-plane.sh");
    let inits = sb.stub_files("kubeadm-init-config.");
    assert_eq!(inits.len(), 1);
    assert!(
        inits[0].contains("    - name: \"allocate-node-cidrs\"\n      value: \"false\"\n"),
        "{}",
        inits[0]
    );
    // Several pod ranges: kube-proxy tells local traffic by the Node's own podCIDR.
    assert!(
        inits[0].contains(
            "---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             detectLocalMode: \"NodeCIDR\"\n"
        ),
        "{}",
        inits[0]
    );
    let calls = sb.calls();
    let admin = sb.file("/etc/kubernetes/admin.conf").display().to_string();
    assert!(
        calls.contains(&format!(
            "kubectl --kubeconfig {admin} patch node k8s-cp-1 --type merge -p \
             {{\"spec\":{{\"podCIDR\":\"192.168.19.0/24\",\"podCIDRs\":[\"192.168.19.0/24\"]}}}}"
        )),
        "{calls:#?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("network-interfaces update")),
        "no second range: {calls:#?}"
    );
    let cni = std::fs::read_dir(sb.file("/etc/cni/net.d"))
        .expect("the CNI directory")
        .filter_map(Result::ok)
        .map(|e| read(e.path()))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(cni.contains("192.168.19.0/24"), "{cni}");

    // No alias on the VM: asked for by size; none appears here, so the script stops.
    let sb = control_plane_sandbox("cp-af-none", &config);
    let out = sb.run("infra/startup/control-plane.sh");
    assert!(!out.status.success());
    assert!(
        sb.calls().iter().any(|c| c.ends_with(
            "compute instances network-interfaces update k8s-cp-1 --zone us-central1-a --aliases pods:/24"
        )),
        "{:#?}",
        sb.calls()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no alias IP range in pods"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 22: the range order of a cluster initialised before it changed. kubeadm init is not run
/// again, so the script puts kube-controller-manager's `--allocate-node-cidrs` in its static Pod
/// manifest in line with the order (false for alias-first: one allocator,
/// deckhouse/deckhouse#4110), leaving every other line as it was, and installs itself with a
/// timer that does the same every 5 minutes (`reconcile`): the control plane follows a changed
/// `range_order` (and the admission policy and non-masquerade ranges templated with it) without
/// a reboot. The installed copy runs on its own; a second reconcile writes nothing.
#[test]
fn an_initialised_control_plane_follows_a_changed_range_order() {
    let alias_first = alias_first_config();
    let sb = alias_first_sandbox("cp-reconcile", &alias_first);
    let manifest = sb.file("/etc/kubernetes/manifests/kube-controller-manager.yaml");
    std::fs::create_dir_all(manifest.parent().expect("dir")).expect("mkdir");
    std::fs::write(sb.file("/etc/kubernetes/admin.conf"), "admin kubeconfig\n").expect("admin");
    std::fs::create_dir_all(sb.file("/etc/kubernetes/pki")).expect("mkdir");
    std::fs::write(
        sb.file("/etc/kubernetes/pki/ca.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIFAKECA\n-----END CERTIFICATE-----\n",
    )
    .expect("ca");
    let kcm = |allocate: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-controller-manager\n  \
             namespace: kube-system\nspec:\n  containers:\n  - command:\n    \
             - kube-controller-manager\n    - --allocate-node-cidrs={allocate}\n    \
             - --cluster-cidr=192.168.16.0/21\n    - --node-cidr-mask-size=24\n    \
             image: registry.k8s.io/kube-controller-manager:v1.33.5\n"
        )
    };
    std::fs::write(&manifest, kcm("true")).expect("manifest");

    sb.run_ok("infra/startup/control-plane.sh");
    assert!(
        !sb.calls().iter().any(|c| c.starts_with("kubeadm init")),
        "an initialised cluster is not initialised again"
    );
    assert_eq!(read(&manifest), kcm("false"), "only the flag changed");
    let unit = read(sb.file("/etc/systemd/system/nodewire-reconcile.service"));
    assert!(
        unit.contains("ExecStart=/bin/bash /usr/local/lib/nodewire/control-plane.sh reconcile"),
        "{unit}"
    );
    assert!(
        read(sb.file("/etc/systemd/system/nodewire-reconcile.timer"))
            .contains("OnUnitActiveSec=5min")
    );
    assert!(
        sb.calls()
            .contains(&"systemctl enable --now nodewire-reconcile.timer".to_string()),
        "{:#?}",
        sb.calls()
    );

    // Terraform switches the deployment back to cluster-first: the timer's run follows.
    sb.md.set(
        "instance/attributes/nodewire-cluster-config",
        &cluster_config(),
    );
    sb.clear_calls();
    let installed = sb.file("/usr/local/lib/nodewire/control-plane.sh");
    let out = sb.run_path(&installed, &["reconcile"]);
    assert!(out.status.success());
    assert_eq!(read(&manifest), kcm("true"));
    let calls = sb.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("kubectl ")
            && c.contains("apply -f")
            && c.contains("nodewire-k8s-policy.yaml")),
        "the admission policy is applied again: {calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.contains("apply -f") && c.contains("ip-masq-agent-config.yaml")),
        "{calls:#?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("kubeadm") || c.contains("network-interfaces")),
        "reconcile touches nothing else: {calls:#?}"
    );
    // Nothing to change: the manifest is not rewritten (the kubelet would restart the Pod).
    let before = std::fs::metadata(&manifest)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = sb.run_path(&installed, &["reconcile"]);
    assert!(out.status.success());
    let after = std::fs::metadata(&manifest)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after);

    // A manifest without the flag is not guessed at: the reconcile says so and fails.
    std::fs::write(
        &manifest,
        kcm("true").replace("    - --allocate-node-cidrs=true\n", ""),
    )
    .expect("manifest");
    sb.md
        .set("instance/attributes/nodewire-cluster-config", &alias_first);
    let out = sb.run_path(&installed, &["reconcile"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no --allocate-node-cidrs flag")
            || String::from_utf8_lossy(&out.stdout).contains("no --allocate-node-cidrs flag")
    );
}
