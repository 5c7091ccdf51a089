#!/usr/bin/env bash
# nodewire control-plane startup script (Debian 12 GCE images; the control-plane VM's
# startup-script).
#
# 1. Reads instance/attributes/nodewire-cluster-config (JSON: pod_range, service_range,
#    pod_range_name, cluster_name, kubernetes_version, advertise_address, audit_log_name,
#    kube_token_secret, kube_join_token_secret, kube_ca_secret, join_mode, and range_order:
#    cluster-first when absent).
# 2. The same base install as node.sh.
# 3. /etc/kubernetes/audit-policy.yaml from instance/attributes/nodewire-audit-policy; the
#    Google Cloud Ops Agent shipping the API server's JSON audit log as log <audit_log_name>.
# 4. kubeadm init (skipped when /etc/kubernetes/admin.conf exists) with the pod and service
#    ranges, node CIDR allocation (/24 per Node) and the audit flags, --skip-token-print;
#    then the bootstrap token init created is deleted (nodewire never uses it).
# 4b. Both join modes: kubeadm's ClusterRoleBinding kubeadm:node-autoapprove-bootstrap is
#    deleted on every boot. It lets kube-controller-manager approve a node client certificate
#    for ANY node name to any bootstrap-token holder (csrapproving's nodeclient rule never
#    compares the name with the requester). In pull mode nodewire's join service approves each
#    VM's certificate itself after verifying the VM's identity; in metadata mode node-events
#    approves a kubelet's CSR only when it names the VM its bootstrap token was minted for.
#    `kubeadm upgrade apply` creates the binding again: a systemd timer
#    (nodewire-no-autoapprove.timer) deletes it every 5 minutes.
# 5. kubectl apply of instance/attributes/nodewire-k8s-rbac, nodewire-k8s-policy and
#    nodewire-k8s-ip-masq (infra/k8s); nodewire-k8s-rbac-metadata-mode is applied in metadata
#    mode and deleted in pull mode.
# 6. The tokens of ServiceAccounts kube-system/nodewire and kube-system/nodewire-join (the
#    join service's own identity) and the cluster CA into Secret Manager (a new version only
#    when the latest one differs). The tokens are never printed.
# 7. This VM's alias IP range = its own Node's podCIDR, and the CNI configuration for it.
#    cluster-first: kube-controller-manager assigns the podCIDR (--allocate-node-cidrs=true)
#    and the alias follows it; alias-first: kube-controller-manager allocates none
#    (--allocate-node-cidrs=false, nodewire is the only allocator), the VM asks Compute Engine
#    for a /24 of the pod range by size and sets its own Node's empty podCIDR to it.
# 8. On a cluster initialised before the range order changed, kube-controller-manager's
#    --allocate-node-cidrs in its static Pod manifest is put in line with the order. This
#    script installs itself under /usr/local/lib/nodewire and nodewire-reconcile.timer runs
#    `control-plane.sh reconcile` every 5 minutes: the admission policy, ip-masq-agent's
#    non-masquerade ranges and that flag follow the deployment's metadata between boots.
#
# Tests only: NODEWIRE_ROOT (prefix of every path), NODEWIRE_METADATA_URL, NODEWIRE_RETRY_SLEEP,
# NODEWIRE_CMD_ATTEMPTS, NODEWIRE_MD_ATTEMPTS, NODEWIRE_MD_TIMEOUT_SEC,
# NODEWIRE_PODCIDR_ATTEMPTS, NODEWIRE_TOKEN_ATTEMPTS.
set -euo pipefail
umask 022
readonly SCRIPT_NAME="nodewire-control-plane"

# The shared functions (common.sh): already defined when the deployment delivered both files as
# one startup-script, otherwise read from beside this script.
COMMON_BESIDE=""
if [[ -z "${NODEWIRE_COMMON_LOADED:-}" ]]; then
  # shellcheck source-path=SCRIPTDIR source=common.sh
  source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
  COMMON_BESIDE="$(dirname "${BASH_SOURCE[0]}")/common.sh"
fi
readonly COMMON_BESIDE

readonly NOMASQ_RE='^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}(,[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}){0,63}$'
readonly TOKEN_ATTEMPTS="${NODEWIRE_TOKEN_ATTEMPTS:-60}"
readonly ADMIN_CONF="${ROOT}/etc/kubernetes/admin.conf"
readonly KCM_MANIFEST="${ROOT}/etc/kubernetes/manifests/kube-controller-manager.yaml"
# Where the reconcile timer runs this script from (the startup script itself is a temporary
# file of the metadata script runner).
readonly INSTALL_DIR="/usr/local/lib/nodewire"
readonly OPS_AGENT_REPO_SCRIPT="https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh"

kc() { kubectl --kubeconfig "$ADMIN_CONF" "$@"; }

ops_agent_install() {
  (cd "${WORK}/ops-agent" &&
    curl -sSO "$OPS_AGENT_REPO_SCRIPT" &&
    bash add-google-cloud-ops-agent-repo.sh --also-install)
}

# install_ops_agent LOG_NAME: ships /var/log/kubernetes/audit/audit.log as log LOG_NAME (the
# receiver id), one JSON audit Event per entry (jsonPayload).
install_ops_agent() {
  local name="$1" marker="${ROOT}/var/lib/nodewire/ops-agent-installed"
  if [[ ! -f "$marker" ]]; then
    mkdir -p "${WORK}/ops-agent"
    retry ops_agent_install
    touch "$marker"
  fi
  mkdir -p "${ROOT}/etc/google-cloud-ops-agent"
  cat >"${ROOT}/etc/google-cloud-ops-agent/config.yaml" <<YAML
# Written by nodewire's control-plane startup script: kube-apiserver's JSON audit log to
# Cloud Logging as projects/PROJECT/logs/${name} (resource gce_instance).
logging:
  receivers:
    ${name}:
      type: files
      include_paths: [/var/log/kubernetes/audit/audit.log]
      record_log_file_path: true
  processors:
    ${name}_json:
      type: parse_json
      time_key: stageTimestamp
      time_format: "%Y-%m-%dT%H:%M:%S.%LZ"
  service:
    pipelines:
      ${name}:
        receivers: [${name}]
        processors: [${name}_json]
YAML
  systemctl restart google-cloud-ops-agent
}

# write_kubeadm_config FILE ...: InitConfiguration + ClusterConfiguration (v1beta4).
write_kubeadm_config() {
  local file="$1" name="$2" provider_id="$3" advertise="$4" cluster="$5" version="$6"
  local pods="$7" services="$8" allocate="$9"
  cat >"$file" <<YAML
# Written by nodewire's control-plane startup script.
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
# kubeadm's own token is not used (nodewire mints one per VM, or none in pull mode): short-lived,
# and deleted right after init.
bootstrapTokens:
  - groups: ["system:bootstrappers:kubeadm:default-node-token"]
    ttl: "15m0s"
    usages: ["signing", "authentication"]
localAPIEndpoint:
  advertiseAddress: "${advertise}"
  bindPort: 6443
nodeRegistration:
  name: "${name}"
  criSocket: "unix:///var/run/containerd/containerd.sock"
  kubeletExtraArgs:
    - name: "provider-id"
      value: "${provider_id}"
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: "${cluster}"
kubernetesVersion: "v${version}"
controlPlaneEndpoint: "${advertise}:6443"
networking:
  podSubnet: "${pods}"
  serviceSubnet: "${services}"
apiServer:
  extraArgs:
    - name: "audit-policy-file"
      value: "/etc/kubernetes/audit-policy.yaml"
    - name: "audit-log-path"
      value: "/var/log/kubernetes/audit/audit.log"
    - name: "audit-log-format"
      value: "json"
    - name: "audit-log-maxsize"
      value: "100"
    - name: "audit-log-maxbackup"
      value: "5"
  extraVolumes:
    - name: "audit-policy"
      hostPath: "/etc/kubernetes/audit-policy.yaml"
      mountPath: "/etc/kubernetes/audit-policy.yaml"
      readOnly: true
      pathType: "File"
    - name: "audit-log"
      hostPath: "/var/log/kubernetes/audit"
      mountPath: "/var/log/kubernetes/audit"
      readOnly: false
      pathType: "DirectoryOrCreate"
controllerManager:
  extraArgs:
    - name: "allocate-node-cidrs"
      value: "${allocate}"
    - name: "cluster-cidr"
      value: "${pods}"
    - name: "node-cidr-mask-size"
      value: "24"
YAML
  if [[ "$allocate" == false ]]; then
    # Alias-first: Pods may come from several pod ranges (additional_pod_ranges), so kube-proxy
    # tells a Pod's traffic by its own Node's podCIDR, not by one cluster CIDR (GKE runs
    # kube-proxy with --detect-local-mode=NodeCIDR for the same reason).
    cat >>"$file" <<'YAML'
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
detectLocalMode: "NodeCIDR"
YAML
  fi
  chmod 0600 "$file"
}

kubeadm_init() {
  local i
  for ((i = 1; i <= CMD_ATTEMPTS; i++)); do
    log "kubeadm init (try ${i}/${CMD_ATTEMPTS})"
    if kubeadm init --config "$1" --skip-token-print; then return 0; fi
    log "kubeadm init failed; kubeadm reset -f"
    kubeadm reset -f || log "kubeadm reset failed"
    sleep "$RETRY_SLEEP"
  done
  return 1
}

# delete_init_tokens: the bootstrap token(s) kubeadm init created (every bootstrap-token Secret
# nodewire did not mint). Only the Secrets' names (the public token id) are read or logged.
delete_init_tokens() {
  local names
  names="$(retry kc -n kube-system get secrets \
    --field-selector type=bootstrap.kubernetes.io/token -l '!nodewire.io/instance' -o name)" ||
    die "listing kubeadm's bootstrap tokens failed"
  if [[ -z "$names" ]]; then
    log "no kubeadm bootstrap token to delete"
    return 0
  fi
  # shellcheck disable=SC2086 # one name per word
  retry kc -n kube-system delete --ignore-not-found $names
  log "deleted kubeadm's bootstrap token(s): ${names//$'\n'/ }"
}

# drop_bootstrap_autoapproval: no auto-approval of node client certificates for bootstrap
# tokens, in either join mode (see 4b above; in metadata mode node-events decides those CSRs).
# A systemd timer deletes it again every 5 minutes: `kubeadm upgrade apply` recreates it, and
# the control plane may run long between boots.
drop_bootstrap_autoapproval() {
  local unit="${ROOT}/etc/systemd/system/nodewire-no-autoapprove"
  retry kc delete clusterrolebinding kubeadm:node-autoapprove-bootstrap --ignore-not-found
  log "kubeadm:node-autoapprove-bootstrap deleted: bootstrap tokens get no certificate approved"
  mkdir -p "${unit%/*}"
  cat >"${unit}.service" <<'UNIT'
# Written by nodewire's control-plane startup script: kubeadm's auto-approval of node client
# certificates for bootstrap tokens approves them for any node name; kubeadm upgrade recreates
# it.
[Unit]
Description=nodewire: delete kubeadm:node-autoapprove-bootstrap
ConditionPathExists=/etc/kubernetes/admin.conf

[Service]
Type=oneshot
ExecStart=/usr/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf delete clusterrolebinding kubeadm:node-autoapprove-bootstrap --ignore-not-found
UNIT
  enable_timer "$unit" "delete kubeadm:node-autoapprove-bootstrap"
}

# enable_timer UNIT_PATH WHAT: UNIT_PATH.timer running UNIT_PATH.service (written before) every
# 5 minutes from 5 minutes after boot, enabled and started.
enable_timer() {
  cat >"${1}.timer" <<UNIT
[Unit]
Description=nodewire: ${2} every 5 minutes

[Timer]
OnBootSec=5min
OnUnitActiveSec=5min

[Install]
WantedBy=timers.target
UNIT
  chmod 0644 "${1}.service" "${1}.timer"
  systemctl daemon-reload
  systemctl enable --now "${1##*/}.timer"
}

# range_order_of CONFIG: the cluster config's range_order, cluster-first when absent.
range_order_of() {
  if [[ "$1" == *'"range_order"'* ]]; then
    cfg "$1" range_order '^(cluster-first|alias-first)$'
  else
    printf 'cluster-first'
  fi
}

# reconcile_kcm_allocation ORDER: kube-controller-manager's --allocate-node-cidrs follows the
# range order on a cluster initialised before the order changed (kubeadm init sets it on a new
# one): false in alias-first (nodewire is the only allocator; two allocators hand out the same
# range, deckhouse/deckhouse#4110), true in cluster-first. The kubelet restarts the static Pod
# when its manifest changes. Nothing is written when the flag is already right.
reconcile_kcm_allocation() {
  local want=true tmp
  [[ "$1" == alias-first ]] && want=false
  if [[ ! -f "$KCM_MANIFEST" ]]; then
    log "no ${KCM_MANIFEST#"$ROOT"}: kube-controller-manager's flags left as they are"
    return 0
  fi
  if grep -qE -- "^[[:space:]]*- --allocate-node-cidrs=${want}[[:space:]]*\$" "$KCM_MANIFEST"; then
    return 0
  fi
  if ! grep -qE -- '^[[:space:]]*- --allocate-node-cidrs=(true|false)[[:space:]]*$' "$KCM_MANIFEST"; then
    log "WARNING: no --allocate-node-cidrs flag in ${KCM_MANIFEST#"$ROOT"}; set it to ${want} by hand (range order $1)"
    return 1
  fi
  # Written beside manifests/, not in it: the kubelet would read a temporary file there.
  tmp="$(mktemp "${KCM_MANIFEST%/manifests/*}/.nodewire-kcm.XXXXXX")"
  sed -E "s/^([[:space:]]*- --allocate-node-cidrs=)(true|false)([[:space:]]*)\$/\1${want}\3/" \
    "$KCM_MANIFEST" >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$KCM_MANIFEST"
  log "kube-controller-manager: --allocate-node-cidrs=${want} (range order $1); the kubelet restarts it"
}

# reconcile: what follows the deployment's metadata on a running control plane, run every
# 5 minutes by nodewire-reconcile.timer (Terraform changes metadata; the startup script runs
# only at boot): kube-controller-manager's allocation for the range order, the admission
# policy (templated with that order), and ip-masq-agent's non-masquerade ranges (which grow
# with additional_pod_ranges).
reconcile() {
  local config order nomasq file="${ROOT}/etc/kubernetes/nodewire/nodewire-k8s-policy.yaml"
  setup_work
  if [[ ! -f "$ADMIN_CONF" ]]; then
    log "the cluster is not initialised yet: nothing to reconcile"
    return 0
  fi
  config="$(md_get instance/attributes/nodewire-cluster-config)" ||
    die "instance/attributes/nodewire-cluster-config is missing"
  order="$(range_order_of "$config")"
  nomasq="$(cfg "$config" non_masquerade_cidrs "$NOMASQ_RE")"
  mkdir -p "${file%/*}"
  md_get_to instance/attributes/nodewire-k8s-policy "$file" ||
    die "instance/attributes/nodewire-k8s-policy is missing"
  retry kc apply -f "$file"
  log "applied nodewire-k8s-policy (range order ${order})"
  apply_ip_masq_config "$nomasq"
  reconcile_kcm_allocation "$order"
}

# install_reconcile_timer: this script (and common.sh when it is a separate file) under
# INSTALL_DIR, and a systemd timer running `reconcile` every 5 minutes.
install_reconcile_timer() {
  local dir="${ROOT}${INSTALL_DIR}" unit="${ROOT}/etc/systemd/system/nodewire-reconcile"
  mkdir -p "$dir" "${unit%/*}"
  install -m 0755 "${BASH_SOURCE[0]}" "${dir}/control-plane.sh"
  if [[ -n "$COMMON_BESIDE" ]]; then
    install -m 0644 "$COMMON_BESIDE" "${dir}/common.sh"
  fi
  cat >"${unit}.service" <<UNIT
# Written by nodewire's control-plane startup script: the control plane follows the
# deployment's metadata (range order, admission policy, non-masquerade ranges) between boots.
[Unit]
Description=nodewire: reconcile the control plane with the deployment's metadata
ConditionPathExists=/etc/kubernetes/admin.conf

[Service]
Type=oneshot
ExecStart=/bin/bash ${INSTALL_DIR}/control-plane.sh reconcile
UNIT
  enable_timer "$unit" "reconcile the control plane"
}

# apply_manifests MODE: nodewire's RBAC, its admission policy and ip-masq-agent, from metadata;
# in metadata mode also the role that lets node-events decide bootstrap-token CSRs, which pull
# mode deletes (a deployment switched to pull keeps no approval right it no longer uses).
apply_manifests() {
  local key file dir="${ROOT}/etc/kubernetes/nodewire"
  mkdir -p "$dir"
  for key in nodewire-k8s-rbac nodewire-k8s-policy nodewire-k8s-ip-masq nodewire-k8s-rbac-metadata-mode; do
    file="${dir}/${key}.yaml"
    md_get_to "instance/attributes/${key}" "$file" || die "instance/attributes/${key} is missing"
    if [[ "$key" == nodewire-k8s-rbac-metadata-mode && "$1" != metadata ]]; then
      retry kc delete --ignore-not-found -f "$file"
      log "deleted ${key} (join mode $1)"
      continue
    fi
    retry kc apply -f "$file"
    log "applied ${key}"
  done
}

# apply_ip_masq_config CIDRS: ip-masq-agent's ConfigMap with the deployment's non-masquerade
# ranges (comma-separated: node subnet, pods, services, peered ranges), replacing the defaults
# of the manifest applied just before. Traffic to these keeps the Pod's address.
apply_ip_masq_config() {
  local file="${ROOT}/etc/kubernetes/nodewire/ip-masq-agent-config.yaml" cidr cidrs
  IFS=, read -ra cidrs <<<"$1"
  {
    printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata:' '  name: ip-masq-agent' \
      '  namespace: kube-system' 'data:' '  config: |' '    nonMasqueradeCIDRs:'
    for cidr in "${cidrs[@]}"; do
      printf '      - %s\n' "$cidr"
    done
    printf '%s\n' '    masqLinkLocal: false' '    resyncInterval: 60s'
  } >"$file"
  retry kc apply -f "$file"
  log "ip-masq-agent: not masquerading ${1}"
}

# put_secret_version NAME: stdin as a new version of Secret Manager secret NAME, unless the
# latest version holds exactly that already. The data is never printed nor put in an argv.
put_secret_version() {
  local data current wanted
  data="$(cat && printf x)"
  data="${data%x}"
  wanted="$(printf '%s' "$data" | sha256sum)"
  current="$(gcloud secrets versions access latest --secret="$1" 2>/dev/null | sha256sum)" ||
    current=""
  if [[ "$current" == "$wanted" ]]; then
    log "secret $1: latest version is current"
    return 0
  fi
  retry _add_secret_version "$1"
  log "secret $1: new version added"
}
_add_secret_version() {
  printf '%s' "$data" | gcloud secrets versions add "$1" --data-file=- >/dev/null
}

# sa_token_secret SERVICE_ACCOUNT SECRET_MANAGER_SECRET: a service-account-token Secret for
# kube-system/SERVICE_ACCOUNT, its token into Secret Manager.
sa_token_secret() {
  local file="${ROOT}/etc/kubernetes/nodewire/$1-token.yaml" token="" i
  cat >"$file" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $1-token
  namespace: kube-system
  annotations:
    kubernetes.io/service-account.name: $1
type: kubernetes.io/service-account-token
YAML
  retry kc apply -f "$file"
  for ((i = 1; i <= TOKEN_ATTEMPTS; i++)); do
    token="$(kc -n kube-system get secret "$1-token" -o 'jsonpath={.data.token}' |
      base64 -d)" || token=""
    if [[ -n "$token" ]]; then break; fi
    sleep "$RETRY_SLEEP"
  done
  [[ -n "$token" ]] || die "Secret kube-system/$1-token got no token"
  printf '%s' "$token" | put_secret_version "$2"
  token=""
}

# publish_credentials TOKEN_SECRET CA_SECRET JOIN_TOKEN_SECRET: the tokens of nodewire and of
# its join service, and the cluster CA, into Secret Manager.
publish_credentials() {
  sa_token_secret nodewire "$1"
  sa_token_secret nodewire-join "$3"
  put_secret_version "$2" <"${ROOT}/etc/kubernetes/pki/ca.crt"
}

# ensure_alias NAME ZONE RANGE_NAME PODCIDR: this VM's nic0 alias IP range = its podCIDR.
ensure_alias() {
  local current
  current="$(md_get instance/network-interfaces/0/ip-aliases/0)" || current=""
  if [[ "$current" == "$4" ]]; then
    log "alias IP range $4 already in place"
    return 0
  fi
  retry gcloud compute instances network-interfaces update "$1" --zone "$2" \
    --aliases "$3:$4"
  log "alias IP range $3:$4 set"
}

# own_alias_range NAME ZONE RANGE_NAME: alias-first: this VM's alias IP range, asked of
# Compute Engine by size (RANGE_NAME:/24) when it has none; prints it.
own_alias_range() {
  local current i
  current="$(md_get instance/network-interfaces/0/ip-aliases/0)" || current=""
  if [[ ! "$current" =~ $CIDR_RE ]]; then
    retry gcloud compute instances network-interfaces update "$1" --zone "$2" \
      --aliases "$3:/24"
    for ((i = 1; i <= PODCIDR_ATTEMPTS; i++)); do
      current="$(md_get instance/network-interfaces/0/ip-aliases/0)" || current=""
      [[ "$current" =~ $CIDR_RE ]] && break
      sleep "$RETRY_SLEEP"
    done
  fi
  [[ "$current" =~ $CIDR_RE ]] || return 1
  log "alias IP range $3:${current}"
  printf '%s' "$current"
}

# set_own_pod_cidr KUBECONFIG NODE CIDR: alias-first: the Node's empty podCIDR(s) := CIDR; one
# already set must be CIDR (a podCIDR never changes).
set_own_pod_cidr() {
  local current
  current="$(kubectl --kubeconfig "$1" get node "$2" -o jsonpath='{.spec.podCIDR}')" || current=""
  if [[ -n "$current" ]]; then
    [[ "$current" == "$3" ]] || die "Node $2 has podCIDR ${current}, its alias IP range is $3"
    return 0
  fi
  retry kubectl --kubeconfig "$1" patch node "$2" --type merge \
    -p "{\"spec\":{\"podCIDR\":\"$3\",\"podCIDRs\":[\"$3\"]}}"
  log "podCIDR $3 set on Node $2"
}

main() {
  local config pods services range_name cluster version advertise audit_log token_secret
  local ca_secret join_token_secret join_mode range_order name zone project cidr nomasq
  console_log
  setup_work
  config="$(md_get instance/attributes/nodewire-cluster-config)" ||
    die "instance/attributes/nodewire-cluster-config is missing"
  pods="$(cfg "$config" pod_range "$CIDR_RE")"
  services="$(cfg "$config" service_range "$CIDR_RE")"
  range_name="$(cfg "$config" pod_range_name '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')"
  cluster="$(cfg "$config" cluster_name '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')"
  version="$(cfg "$config" kubernetes_version '^[0-9]+\.[0-9]+\.[0-9]+$')"
  advertise="$(cfg "$config" advertise_address '^[0-9]{1,3}(\.[0-9]{1,3}){3}$')"
  audit_log="$(cfg "$config" audit_log_name '^[A-Za-z0-9_]{1,64}$')"
  token_secret="$(cfg "$config" kube_token_secret '^[A-Za-z0-9_-]{1,255}$')"
  ca_secret="$(cfg "$config" kube_ca_secret '^[A-Za-z0-9_-]{1,255}$')"
  join_token_secret="$(cfg "$config" kube_join_token_secret '^[A-Za-z0-9_-]{1,255}$')"
  join_mode="$(cfg "$config" join_mode '^(pull|metadata)$')"
  range_order="$(range_order_of "$config")"
  nomasq="$(cfg "$config" non_masquerade_cidrs "$NOMASQ_RE")"
  name="$(md_get instance/name)" || die "instance/name is missing"
  zone="$(md_get instance/zone)" || die "instance/zone is missing"
  zone="${zone##*/}"
  project="$(md_get project/project-id)" || die "project/project-id is missing"
  log "control plane ${name} (${zone}), cluster ${cluster}, Kubernetes ${version}"

  guest_agent_no_ip_aliases
  kernel_prereqs
  install_base "$version"

  mkdir -p "${ROOT}/etc/kubernetes" "${ROOT}/var/log/kubernetes/audit"
  chmod 0700 "${ROOT}/var/log/kubernetes/audit"
  md_get_to instance/attributes/nodewire-audit-policy "${ROOT}/etc/kubernetes/audit-policy.yaml" ||
    die "instance/attributes/nodewire-audit-policy is missing"
  install_ops_agent "$audit_log"

  if [[ -f "$ADMIN_CONF" ]]; then
    log "/etc/kubernetes/admin.conf exists: the cluster is initialised, not running kubeadm init"
  else
    write_kubeadm_config "${ROOT}/etc/kubernetes/nodewire-kubeadm.yaml" "$name" \
      "gce://${project}/${zone}/${name}" "$advertise" "$cluster" "$version" "$pods" "$services" \
      "$([[ "$range_order" == alias-first ]] && echo false || echo true)"
    kubeadm_init "${ROOT}/etc/kubernetes/nodewire-kubeadm.yaml" || die "kubeadm init failed"
    delete_init_tokens
  fi
  drop_bootstrap_autoapproval
  reconcile_kcm_allocation "$range_order" || log "WARNING: kube-controller-manager's allocation not reconciled"

  apply_manifests "$join_mode"
  apply_ip_masq_config "$nomasq"
  publish_credentials "$token_secret" "$ca_secret" "$join_token_secret"

  if [[ "$range_order" == alias-first ]]; then
    cidr="$(own_alias_range "$name" "$zone" "$range_name")" ||
      die "no alias IP range in ${range_name} for ${name}"
    set_own_pod_cidr "$ADMIN_CONF" "$name" "$cidr"
    write_cni_config "$cidr"
  else
    cidr="$(node_pod_cidr "$ADMIN_CONF" "$name")" || die "Node ${name} has no spec.podCIDR"
    write_cni_config "$cidr"
    ensure_alias "$name" "$zone" "$range_name" "$cidr"
  fi
  install_reconcile_timer
  log "done"
}

if [[ "${1:-}" == reconcile ]]; then
  reconcile
else
  main "$@"
fi
