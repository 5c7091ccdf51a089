#!/usr/bin/env bash
# shellcheck shell=bash
# nodewire's startup-script library: what the node and control-plane scripts share. A VM gets
# one startup-script, so the deployment delivers this file and the script concatenated
# (infra/terraform: common.sh, a newline, then node.sh or control-plane.sh); from a checkout,
# each script sources this file from beside itself. It only defines: the caller sets
# SCRIPT_NAME and the shell options.
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
  retry apt-get install -y -q --no-install-recommends ca-certificates curl gpg openssl \
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
# shellcheck disable=SC2034 # read by the scripts' guard before they source this file
readonly NODEWIRE_COMMON_LOADED=1
