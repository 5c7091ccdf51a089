#!/usr/bin/env bash
# nodewire node startup script (Debian 12 GCE images; passed as the VM's startup-script).
#
# 1. Reads instance/attributes/nodewire-node-config ({"kubernetes_version", "cluster_name"}).
# 2. Base install: guest agent ip_aliases = false, overlay + br_netfilter, ip_forward and
#    bridge-nf-call-iptables, containerd (SystemdCgroup), the CNI plugins, and
#    kubelet/kubeadm/kubectl from pkgs.k8s.io at the configured version, held.
# 3. Waits for nodewire's JoinConfiguration in instance/attributes/kubeadm-join, writes it to
#    /etc/kubernetes/nodewire-join.yaml (0600), runs `kubeadm join --config` with retries
#    (`kubeadm reset -f` between tries) and removes the file. A configuration that keeps
#    failing is dropped and the script waits for nodewire to write a new one. Skipped when
#    /etc/kubernetes/kubelet.conf exists (the VM joined before: a reboot).
# 4. Installs nodewire-kubelet-restart.service (docs/operations.md, "VM alive, Node gone").
# 5. Waits for the Node's spec.podCIDR and writes the CNI configuration for it.
#
# Tests only: NODEWIRE_ROOT (prefix of every path), NODEWIRE_METADATA_URL, NODEWIRE_RETRY_SLEEP,
# NODEWIRE_CMD_ATTEMPTS, NODEWIRE_MD_ATTEMPTS, NODEWIRE_MD_TIMEOUT_SEC,
# NODEWIRE_PODCIDR_ATTEMPTS, NODEWIRE_JOIN_ATTEMPTS, NODEWIRE_JOIN_TIMEOUT_SEC,
# NODEWIRE_JOIN_WAIT_MAX_SEC (0, the default: wait for a join configuration for ever).
set -euo pipefail
umask 022
readonly SCRIPT_NAME="nodewire-node"

# ---- nodewire common begin: this block is identical in node.sh and control-plane.sh (only one
# file is delivered per VM, so it is repeated; tests/tests/startup_scripts.rs checks that the
# two copies are equal). ----
# Every path is under NODEWIRE_ROOT (empty on a VM; a temporary root in the tests).
readonly ROOT="${NODEWIRE_ROOT:-}"
readonly MD_URL="${NODEWIRE_METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"
readonly RETRY_SLEEP="${NODEWIRE_RETRY_SLEEP:-5}"
readonly CMD_ATTEMPTS="${NODEWIRE_CMD_ATTEMPTS:-5}"
readonly MD_ATTEMPTS="${NODEWIRE_MD_ATTEMPTS:-60}"
readonly MD_TIMEOUT_SEC="${NODEWIRE_MD_TIMEOUT_SEC:-300}"
readonly PODCIDR_ATTEMPTS="${NODEWIRE_PODCIDR_ATTEMPTS:-120}"
readonly WORK="${ROOT}/var/lib/nodewire/startup"
readonly CIDR_RE='^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$'

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$SCRIPT_NAME" "$*" >&2; }
die() {
  log "FATAL: $*"
  exit 1
}

# Everything this script prints goes to the serial console too (when there is one).
console_log() {
  local console="${ROOT}/dev/ttyS0"
  if [[ -c "$console" && -w "$console" ]]; then
    exec > >(tee -a "$console") 2>&1
  fi
}

setup_work() {
  mkdir -p "$WORK"
  chmod 0700 "$WORK"
}

# retry CMD...: runs CMD up to CMD_ATTEMPTS times, RETRY_SLEEP apart.
retry() {
  local i
  for ((i = 1; ; i++)); do
    if "$@"; then return 0; fi
    if ((i >= CMD_ATTEMPTS)); then
      log "giving up after ${i} tries: $1 ${2:-}"
      return 1
    fi
    log "failed (try ${i}/${CMD_ATTEMPTS}): $1 ${2:-}; retrying"
    sleep "$RETRY_SLEEP"
  done
}

# md_fetch PATH OUT [HEADERS]: GET ${MD_URL}/PATH into the file OUT (response headers into
# HEADERS); prints the HTTP status, 000 when the server was not reached.
md_fetch() {
  local code
  code="$(curl -sS --connect-timeout 10 --max-time "$((MD_TIMEOUT_SEC + 30))" \
    -H 'Metadata-Flavor: Google' -D "${3:-/dev/null}" -o "$2" -w '%{http_code}' \
    "${MD_URL}/$1")" || code="000"
  printf '%s' "$code"
}

# md_get_to PATH FILE: the metadata value, byte for byte, into FILE (mode 0600); returns 1
# when the key does not exist (404), dies when the server keeps failing.
md_get_to() {
  local i code
  for ((i = 1; ; i++)); do
    code="$(umask 077 && md_fetch "$1" "$2")"
    case "$code" in
      200) return 0 ;;
      404)
        rm -f "$2"
        return 1
        ;;
    esac
    rm -f "$2"
    ((i < MD_ATTEMPTS)) || die "metadata $1: HTTP ${code} after ${i} tries"
    log "metadata $1: HTTP ${code}; retrying"
    sleep "$RETRY_SLEEP"
  done
}

# md_get PATH: prints the metadata value; returns 1 when the key does not exist.
md_get() {
  local tmp rc=0
  tmp="$(mktemp "${WORK}/md.XXXXXX")"
  md_get_to "$1" "$tmp" || rc=$?
  if ((rc == 0)); then cat "$tmp"; fi
  rm -f "$tmp"
  return "$rc"
}

# header_etag FILE: the ETag of a response (empty when absent or not a plain token).
header_etag() {
  local etag
  etag="$(tr -d '\r' <"$1" | sed -n 's/^[Ee][Tt][Aa][Gg]:[[:space:]]*//p' | tail -n 1)"
  if [[ "$etag" =~ ^[A-Za-z0-9._-]{1,128}$ ]]; then printf '%s' "$etag"; fi
}

# cfg JSON KEY REGEX: the string value of KEY in the flat JSON object JSON, checked against
# REGEX (values are names, versions and CIDRs: no escapes). Dies when absent or malformed.
cfg() {
  local re="\"$2\"[[:space:]]*:[[:space:]]*\"([^\"\\\\]*)\"" value
  [[ "$1" =~ $re ]] || die "configuration: \"$2\" is missing"
  value="${BASH_REMATCH[1]}"
  [[ "$value" =~ $3 ]] || die "configuration: \"$2\" is malformed"
  printf '%s' "$value"
}

# The guest agent must not install the VM's alias IP ranges (the pod range) as local routes:
# the pods behind cni0 own those addresses, not the host.
guest_agent_no_ip_aliases() {
  local conf="${ROOT}/etc/default/instance_configs.cfg" tmp
  mkdir -p "${conf%/*}"
  touch "$conf"
  tmp="$(mktemp "${conf}.XXXXXX")"
  awk '
    /^[[:space:]]*\[/ {
      insec = ($0 ~ /^[[:space:]]*\[IpForwarding\][[:space:]]*$/)
      print
      if (insec && !done) { print "ip_aliases = false"; done = 1 }
      next
    }
    insec && /^[[:space:]]*ip_aliases[[:space:]]*=/ { next }
    { print }
    END { if (!done) { print "[IpForwarding]"; print "ip_aliases = false" } }
  ' "$conf" >"$tmp"
  chmod 0644 "$tmp"
  if cmp -s "$tmp" "$conf"; then
    rm -f "$tmp"
    return 0
  fi
  mv -f "$tmp" "$conf"
  log "guest agent: ip_aliases = false; restarting google-guest-agent"
  systemctl restart google-guest-agent || log "could not restart google-guest-agent"
}

kernel_prereqs() {
  mkdir -p "${ROOT}/etc/modules-load.d" "${ROOT}/etc/sysctl.d"
  printf 'overlay\nbr_netfilter\n' >"${ROOT}/etc/modules-load.d/nodewire-k8s.conf"
  modprobe overlay
  modprobe br_netfilter
  printf '%s\n' 'net.ipv4.ip_forward = 1' 'net.bridge.bridge-nf-call-iptables = 1' \
    'net.bridge.bridge-nf-call-ip6tables = 1' >"${ROOT}/etc/sysctl.d/99-nodewire-k8s.conf"
  sysctl -p "${ROOT}/etc/sysctl.d/99-nodewire-k8s.conf" >/dev/null
}

configure_containerd() {
  mkdir -p "${ROOT}/etc/containerd"
  cat >"${ROOT}/etc/containerd/config.toml" <<'EOF'
# Written by nodewire's startup script.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true

  # Debian's containernetworking-plugins installs the CNI plugins here.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
EOF
  systemctl enable containerd
  systemctl restart containerd
}

# Debian 12's own containerd is 1.6, out of support since July 2025 and not in containerd's
# support grid for Kubernetes 1.33 (1.7.24+ or 2.0.1+): take Docker's containerd.io 1.7.
docker_apt_key() {
  curl -fsSL --retry 5 "https://download.docker.com/linux/debian/gpg" |
    gpg --batch --yes --dearmor -o "${ROOT}/etc/apt/keyrings/docker-apt-keyring.gpg"
}

k8s_apt_key() {
  curl -fsSL --retry 5 "https://pkgs.k8s.io/core:/stable:/v$1/deb/Release.key" |
    gpg --batch --yes --dearmor -o "${ROOT}/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
}

# install_base VERSION: containerd 1.7 (Docker's containerd.io), the CNI plugins, kubelet/kubeadm/kubectl VERSION (held).
install_base() {
  local version="$1" minor="${1%.*}" marker="${ROOT}/var/lib/nodewire/base-installed-$1"
  if [[ -f "$marker" ]]; then
    log "base packages for Kubernetes ${version} already installed"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  retry apt-get update -q
  retry apt-get install -y -q --no-install-recommends ca-certificates curl gpg \
    containernetworking-plugins conntrack socat ethtool iptables
  mkdir -p "${ROOT}/etc/apt/keyrings" "${ROOT}/etc/apt/sources.list.d"
  retry docker_apt_key
  chmod 0644 "${ROOT}/etc/apt/keyrings/docker-apt-keyring.gpg"
  printf 'deb [signed-by=/etc/apt/keyrings/docker-apt-keyring.gpg] %s bookworm stable\n' \
    "https://download.docker.com/linux/debian" >"${ROOT}/etc/apt/sources.list.d/docker.list"
  retry apt-get update -q
  retry apt-get install -y -q --no-install-recommends "containerd.io=1.7.*"
  apt-mark hold containerd.io
  configure_containerd
  retry k8s_apt_key "$minor"
  chmod 0644 "${ROOT}/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
  printf 'deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] %s /\n' \
    "https://pkgs.k8s.io/core:/stable:/v${minor}/deb/" \
    >"${ROOT}/etc/apt/sources.list.d/kubernetes.list"
  retry apt-get update -q
  retry apt-get install -y -q --no-install-recommends --allow-change-held-packages \
    "kubelet=${version}-*" "kubeadm=${version}-*" "kubectl=${version}-*"
  apt-mark hold kubelet kubeadm kubectl
  systemctl enable kubelet
  touch "$marker"
}

# node_pod_cidr KUBECONFIG NODE: waits for the Node's spec.podCIDR and prints it.
node_pod_cidr() {
  local i cidr
  for ((i = 1; i <= PODCIDR_ATTEMPTS; i++)); do
    cidr="$(kubectl --kubeconfig "$1" get node "$2" -o jsonpath='{.spec.podCIDR}')" || cidr=""
    if [[ "$cidr" =~ $CIDR_RE ]]; then
      printf '%s' "$cidr"
      return 0
    fi
    sleep "$RETRY_SLEEP"
  done
  return 1
}

# write_cni_config PODCIDR: the bridge + host-local CNI configuration for this Node's range
# (infra/k8s/README.md says why). Masquerading is ip-masq-agent's; routing between nodes is
# the VPC's alias IP ranges.
write_cni_config() {
  local dir="${ROOT}/etc/cni/net.d" tmp
  mkdir -p "$dir"
  tmp="$(mktemp "${dir}/.nodewire.XXXXXX")"
  cat >"$tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "nodewire",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
EOF
  chmod 0644 "$tmp"
  mv -f "$tmp" "${dir}/10-nodewire-bridge.conflist"
  log "CNI configuration written for podCIDR $1"
}
# ---- nodewire common end ----

readonly JOIN_FILE="${ROOT}/etc/kubernetes/nodewire-join.yaml"
readonly JOIN_ATTEMPTS="${NODEWIRE_JOIN_ATTEMPTS:-5}"
readonly JOIN_TIMEOUT_SEC="${NODEWIRE_JOIN_TIMEOUT_SEC:-900}"
readonly JOIN_WAIT_MAX_SEC="${NODEWIRE_JOIN_WAIT_MAX_SEC:-0}"

# try_join: kubeadm join with the configuration in JOIN_FILE, JOIN_ATTEMPTS times at most.
try_join() {
  local i
  for ((i = 1; i <= JOIN_ATTEMPTS; i++)); do
    log "kubeadm join (try ${i}/${JOIN_ATTEMPTS})"
    if timeout "$JOIN_TIMEOUT_SEC" kubeadm join --config "$JOIN_FILE"; then
      return 0
    fi
    log "kubeadm join failed; kubeadm reset -f"
    kubeadm reset -f || log "kubeadm reset failed"
    sleep "$RETRY_SLEEP"
  done
  return 1
}

# join_cluster: waits for kubeadm-join (a plain read first, then wait_for_change with the
# last ETag) and joins with it. A configuration that failed is not tried again: nodewire mints
# a new token and writes a new one.
join_cluster() {
  local headers="${WORK}/join.headers" path code etag="" sum failed=""
  local start="$SECONDS"
  mkdir -p "${ROOT}/etc/kubernetes"
  trap 'rm -f "$JOIN_FILE"' EXIT
  while :; do
    if ((JOIN_WAIT_MAX_SEC > 0 && SECONDS - start > JOIN_WAIT_MAX_SEC)); then
      die "no usable kubeadm-join configuration after ${JOIN_WAIT_MAX_SEC} s"
    fi
    path="instance/attributes/kubeadm-join"
    if [[ -n "$etag" ]]; then
      path+="?wait_for_change=true&timeout_sec=${MD_TIMEOUT_SEC}&last_etag=${etag}"
    fi
    rm -f "$JOIN_FILE"
    code="$(umask 077 && md_fetch "$path" "$JOIN_FILE" "$headers")"
    case "$code" in
      200)
        etag="$(header_etag "$headers")"
        sum="$(sha256sum <"$JOIN_FILE")"
        if [[ ! -s "$JOIN_FILE" || "$sum" == "$failed" ]]; then
          # Empty (nodewire cleared it) or the one that failed: wait for the next value.
          rm -f "$JOIN_FILE"
          if [[ -z "$etag" ]]; then sleep "$RETRY_SLEEP"; fi
          continue
        fi
        chmod 0600 "$JOIN_FILE"
        log "kubeadm-join configuration received"
        if try_join; then
          rm -f "$JOIN_FILE"
          log "joined the cluster"
          return 0
        fi
        rm -f "$JOIN_FILE"
        failed="$sum"
        log "kubeadm join failed ${JOIN_ATTEMPTS} times; waiting for a new kubeadm-join"
        if [[ -z "$etag" ]]; then sleep "$RETRY_SLEEP"; fi
        ;;
      404)
        etag=""
        log "waiting for kubeadm-join in this VM's metadata"
        sleep "$RETRY_SLEEP"
        ;;
      *)
        etag=""
        log "metadata kubeadm-join: HTTP ${code}; retrying"
        sleep "$RETRY_SLEEP"
        ;;
    esac
  done
}

# install_restart_watcher: the kubelet-restart watcher and its unit (copies of
# infra/startup/kubelet-restart-watcher and infra/startup/nodewire-kubelet-restart.service;
# the tests check that they are equal).
install_restart_watcher() {
  mkdir -p "${ROOT}/usr/local/sbin" "${ROOT}/etc/systemd/system" "${ROOT}/var/lib/nodewire"
  cat >"${ROOT}/usr/local/sbin/nodewire-kubelet-restart-watcher" <<'NODEWIRE_WATCHER_EOF'
#!/usr/bin/env bash
# nodewire's node-side kubelet-restart watcher (docs/operations.md, "VM alive, Node gone").
#
# Waits on the metadata server for the instance attribute nodewire-restart-kubelet
# (value COUNT@UNIX, written by nodewire's bootstrap step) and restarts the kubelet ONCE for
# every value it has not handled yet: a restarted kubelet registers its Node again. The last
# value handled is kept in /var/lib/nodewire/kubelet-restart.seen, so a repeated value (the
# metadata server answering the same value after a timeout, a restart of this unit, a reboot)
# restarts nothing. Malformed values are logged and ignored.
#
# Installed by node.sh as /usr/local/sbin/nodewire-kubelet-restart-watcher and run by
# nodewire-kubelet-restart.service. Environment (tests only): NODEWIRE_ROOT (prefix of every
# path), NODEWIRE_METADATA_URL, NODEWIRE_WATCH_TIMEOUT_SEC (long-poll, default 300),
# NODEWIRE_RETRY_SLEEP (after an error or a missing key, default 5),
# NODEWIRE_WATCH_MAX_POLLS (stop after that many requests; default 0 = never).
set -uo pipefail

readonly ROOT="${NODEWIRE_ROOT:-}"
readonly MD_URL="${NODEWIRE_METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"
readonly KEY="nodewire-restart-kubelet"
readonly STATE_DIR="${ROOT}/var/lib/nodewire"
readonly SEEN="${STATE_DIR}/kubelet-restart.seen"
readonly TIMEOUT_SEC="${NODEWIRE_WATCH_TIMEOUT_SEC:-300}"
readonly RETRY_SLEEP="${NODEWIRE_RETRY_SLEEP:-5}"
readonly MAX_POLLS="${NODEWIRE_WATCH_MAX_POLLS:-0}"

log() { printf 'nodewire-kubelet-restart: %s\n' "$*" >&2; }

mkdir -p "$STATE_DIR"
tmp="$(mktemp -d "${STATE_DIR}/.watch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

seen=""
[[ -f "$SEEN" ]] && seen="$(<"$SEEN")"
etag=""
polls=0

while [[ "$MAX_POLLS" -eq 0 || "$polls" -lt "$MAX_POLLS" ]]; do
  polls=$((polls + 1))
  # Without an ETag: read the current value at once. With one: wait until it changes (or
  # timeout_sec passes; the server then answers the same value and ETag).
  url="${MD_URL}/instance/attributes/${KEY}"
  if [[ -n "$etag" ]]; then
    url+="?wait_for_change=true&timeout_sec=${TIMEOUT_SEC}&last_etag=${etag}"
  fi
  code="$(curl -sS --connect-timeout 10 --max-time "$((TIMEOUT_SEC + 30))" \
    -H 'Metadata-Flavor: Google' -D "${tmp}/headers" -o "${tmp}/body" \
    -w '%{http_code}' "$url")" || code="000"
  case "$code" in
    200)
      etag="$(tr -d '\r' <"${tmp}/headers" | sed -n 's/^[Ee][Tt][Aa][Gg]:[[:space:]]*//p' | tail -n 1)"
      # An ETag is a short token; anything else is not put back into a URL.
      [[ "$etag" =~ ^[A-Za-z0-9._-]{1,128}$ ]] || etag=""
      value="$(head -c 64 "${tmp}/body")"
      if [[ ! "$value" =~ ^[0-9]+@[0-9]+$ ]]; then
        log "ignoring a malformed ${KEY} value (expected COUNT@UNIX)"
      elif [[ "$value" == "$seen" ]]; then
        : # handled before
      elif systemctl restart kubelet; then
        log "restarted the kubelet for ${KEY}=${value}"
        printf '%s\n' "$value" >"${SEEN}.tmp" && mv -f "${SEEN}.tmp" "$SEEN"
        seen="$value"
      else
        log "systemctl restart kubelet failed for ${KEY}=${value}; will try again"
        etag=""
      fi
      if [[ -z "$etag" ]]; then
        sleep "$RETRY_SLEEP"
      fi
      ;;
    404)
      etag=""
      sleep "$RETRY_SLEEP"
      ;;
    *)
      log "metadata server answered ${code} for ${KEY}; retrying"
      etag=""
      sleep "$RETRY_SLEEP"
      ;;
  esac
done
NODEWIRE_WATCHER_EOF
  chmod 0755 "${ROOT}/usr/local/sbin/nodewire-kubelet-restart-watcher"
  cat >"${ROOT}/etc/systemd/system/nodewire-kubelet-restart.service" <<'NODEWIRE_UNIT_EOF'
# nodewire: restarts the kubelet once for every new value of the instance metadata key
# nodewire-restart-kubelet (docs/operations.md, "VM alive, Node gone"). Installed by node.sh.
[Unit]
Description=nodewire kubelet restart on metadata key nodewire-restart-kubelet
Wants=network-online.target
After=network-online.target kubelet.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/nodewire-kubelet-restart-watcher
Restart=always
RestartSec=10
NoNewPrivileges=true
ProtectHome=true
ProtectSystem=full
PrivateTmp=true

[Install]
WantedBy=multi-user.target
NODEWIRE_UNIT_EOF
  chmod 0644 "${ROOT}/etc/systemd/system/nodewire-kubelet-restart.service"
  systemctl daemon-reload
  systemctl enable nodewire-kubelet-restart.service
  systemctl restart nodewire-kubelet-restart.service
}

main() {
  local config version cluster name cidr
  console_log
  setup_work
  config="$(md_get instance/attributes/nodewire-node-config)" ||
    die "instance/attributes/nodewire-node-config is missing"
  version="$(cfg "$config" kubernetes_version '^[0-9]+\.[0-9]+\.[0-9]+$')"
  cluster="$(cfg "$config" cluster_name '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')"
  name="$(md_get instance/name)" || die "instance/name is missing"
  log "node ${name}, cluster ${cluster}, Kubernetes ${version}"

  guest_agent_no_ip_aliases
  kernel_prereqs
  install_base "$version"

  if [[ -f "${ROOT}/etc/kubernetes/kubelet.conf" ]]; then
    log "/etc/kubernetes/kubelet.conf exists: joined before, not joining again"
  else
    join_cluster
  fi
  install_restart_watcher

  cidr="$(node_pod_cidr "${ROOT}/etc/kubernetes/kubelet.conf" "$name")" ||
    die "Node ${name} has no spec.podCIDR"
  write_cni_config "$cidr"
  log "done"
}

main "$@"
