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

# The shared functions (common.sh): already defined when the deployment delivered both files as
# one startup-script, otherwise read from beside this script.
if [[ -z "${NODEWIRE_COMMON_LOADED:-}" ]]; then
  # shellcheck source-path=SCRIPTDIR source=common.sh
  source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fi

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
