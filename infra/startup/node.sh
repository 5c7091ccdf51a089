#!/usr/bin/env bash
# nodewire node startup script (Debian 12 GCE images; passed as the VM's startup-script).
#
# 1. Reads instance/attributes/nodewire-node-config ({"kubernetes_version", "cluster_name"}).
# 2. Base install: guest agent ip_aliases = false, overlay + br_netfilter, ip_forward and
#    bridge-nf-call-iptables, containerd (SystemdCgroup), the CNI plugins, and
#    kubelet/kubeadm/kubectl from pkgs.k8s.io at the configured version, held.
# 3. Joins the cluster, as instance/attributes/nodewire-join-mode says (pull when absent);
#    skipped when /etc/kubernetes/kubelet.conf exists (the VM joined before: a reboot).
#    - pull: makes a key pair (ECDSA P-256, /var/lib/nodewire/startup/bootstrap-client.key,
#      0600; it never leaves the VM) and a certificate request for
#      CN=system:node:<instance name>, O=system:nodes; sends the request with a fresh
#      instance identity token (audience = instance/attributes/nodewire-join-url) to the join
#      service (POST /v1/join); the answer is the discovery kubeconfig (the cluster CA and
#      server, the client certificate the cluster signed for that key), a line `---`, and the
#      JoinConfiguration (file discovery): written to /etc/kubernetes/nodewire-discovery.conf
#      and /etc/kubernetes/nodewire-join.yaml (0600); runs `kubeadm join --config` with
#      retries (`kubeadm reset -f` between tries), removes the files and the key (kubeadm
#      copied the credential into bootstrap-kubelet.conf; the kubelet makes a key of its own)
#      and reports the join (POST /v1/joined, with another
#      fresh identity token; not fatal when it fails: the Kubernetes audit path is the
#      fallback). 429, 503, 404 (service not deployed yet) and unreachable are retried with
#      capped backoff; 401 and 403 are fatal (the reason is logged); 409 means the Node exists
#      or the identity token was used already (a new one is fetched a few times). Nothing
#      secret is in metadata; the identity token and the configuration are never printed
#      and never passed as an argument (curl reads the Authorization header from a 0600 file).
#    - metadata: waits for nodewire's JoinConfiguration in instance/attributes/kubeadm-join,
#      writes it to the same file (0600), joins as above and removes the file. A
#      configuration that keeps failing is dropped and the script waits for nodewire to write
#      a new one.
# 4. Installs nodewire-kubelet-restart.service (docs/operations.md, "VM alive, Node gone").
# 5. Waits for the Node's spec.podCIDR and writes the CNI configuration for it.
#
# Tests only: NODEWIRE_ROOT (prefix of every path), NODEWIRE_METADATA_URL, NODEWIRE_RETRY_SLEEP,
# NODEWIRE_CMD_ATTEMPTS, NODEWIRE_MD_ATTEMPTS, NODEWIRE_MD_TIMEOUT_SEC,
# NODEWIRE_PODCIDR_ATTEMPTS, NODEWIRE_JOIN_ATTEMPTS, NODEWIRE_JOIN_TIMEOUT_SEC,
# NODEWIRE_JOIN_WAIT_MAX_SEC (0, the default: wait for a join configuration for ever),
# NODEWIRE_JOIN_URL (instead of nodewire-join-url), NODEWIRE_JOIN_BACKOFF_MAX_SEC (cap of the
# pull-mode backoff, default 60), NODEWIRE_JOIN_CONFLICT_ATTEMPTS (409s from /v1/join before
# giving up, default 5), NODEWIRE_JOINED_ATTEMPTS (default 30) and NODEWIRE_JOINED_RETRY_SLEEP
# (default 1) for /v1/joined: the Node and its podCIDR appear within seconds.
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
# Pull mode: the discovery kubeconfig, this VM's key and its certificate request (the paths the
# join service's answer names: nodewire::join::DISCOVERY_KUBECONFIG_PATH, BOOTSTRAP_KEY_PATH).
readonly DISCOVERY_FILE="${ROOT}/etc/kubernetes/nodewire-discovery.conf"
readonly KEY_FILE="${WORK}/bootstrap-client.key"
readonly CSR_FILE="${WORK}/bootstrap-client.csr"
readonly ANSWER_FILE="${WORK}/join.answer"
readonly JOIN_ATTEMPTS="${NODEWIRE_JOIN_ATTEMPTS:-5}"
readonly JOIN_TIMEOUT_SEC="${NODEWIRE_JOIN_TIMEOUT_SEC:-900}"
readonly JOIN_WAIT_MAX_SEC="${NODEWIRE_JOIN_WAIT_MAX_SEC:-0}"
readonly JOIN_BACKOFF_MAX_SEC="${NODEWIRE_JOIN_BACKOFF_MAX_SEC:-60}"
readonly JOIN_CONFLICT_ATTEMPTS="${NODEWIRE_JOIN_CONFLICT_ATTEMPTS:-5}"
readonly JOINED_ATTEMPTS="${NODEWIRE_JOINED_ATTEMPTS:-30}"
readonly JOINED_RETRY_SLEEP="${NODEWIRE_JOINED_RETRY_SLEEP:-1}"
# The join service's URL: https, no path (it is also the identity token's audience and goes
# into a query string as is); plain http only on loopback (the tests).
readonly JOIN_URL_RE='^(https://[A-Za-z0-9.-]+|http://127\.0\.0\.1:[0-9]{1,5})$'
# Pull mode: the identity token and the Authorization header built from it (WORK is 0700).
readonly ID_TOKEN_FILE="${WORK}/identity-token"
readonly AUTH_HEADER_FILE="${WORK}/join-auth-header"
JOIN_URL=""

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

# auth_header: a fresh instance identity token for the audience JOIN_URL (format=full: with
# the instance's project, zone, name and id) into ID_TOKEN_FILE, and the header
# "Authorization: Bearer TOKEN" into AUTH_HEADER_FILE, both 0600. Returns 1 when the metadata
# server gave none. The token is never printed and never an argument (printf is a builtin).
auth_header() {
  local code token
  rm -f "$ID_TOKEN_FILE" "$AUTH_HEADER_FILE"
  code="$(umask 077 && md_fetch \
    "instance/service-accounts/default/identity?audience=${JOIN_URL}&format=full" \
    "$ID_TOKEN_FILE")"
  if [[ "$code" != 200 ]]; then
    log "metadata identity token: HTTP ${code}"
    rm -f "$ID_TOKEN_FILE"
    return 1
  fi
  token="$(<"$ID_TOKEN_FILE")"
  rm -f "$ID_TOKEN_FILE"
  # A JWT: three base64url parts. Anything else must not go into a header.
  if [[ ! "$token" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]]; then
    log "metadata identity token: not a JWT"
    return 1
  fi
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$AUTH_HEADER_FILE")
}

# join_post PATH OUT HEADERS [BODY]: POST ${JOIN_URL}/PATH (the file BODY, a PEM certificate
# request, or an empty body) with the Authorization header from AUTH_HEADER_FILE, which is
# removed afterwards (one token, one request); the answer into OUT (0600), the response headers
# into HEADERS. Prints the status, 000 when the service was not reached.
join_post() {
  local code data=""
  if [[ -n "${4:-}" ]]; then data="@$4"; fi
  code="$(umask 077 && curl -sS --connect-timeout 10 --max-time 60 \
    --data-binary "$data" -H 'Content-Type: application/x-pem-file' \
    -H "@${AUTH_HEADER_FILE}" -D "$3" -o "$2" -w '%{http_code}' \
    "${JOIN_URL}/$1")" || code="000"
  rm -f "$AUTH_HEADER_FILE"
  printf '%s' "$code"
}

# make_request NAME: a new ECDSA P-256 key in KEY_FILE (0600) and a certificate request for
# CN=system:node:NAME, O=system:nodes in CSR_FILE.
make_request() {
  mkdir -p "$WORK"
  rm -f "$KEY_FILE" "$CSR_FILE"
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -out "$KEY_FILE" 2>/dev/null) || die "could not make a key pair"
  openssl req -new -key "$KEY_FILE" -subj "/O=system:nodes/CN=system:node:$1" \
    -out "$CSR_FILE" 2>/dev/null || die "could not make a certificate request"
}

# split_answer: the join service's answer (ANSWER_FILE) into DISCOVERY_FILE (before the first
# line `---`) and JOIN_FILE (after), both 0600. Returns 1 when either part is missing.
split_answer() {
  rm -f "$DISCOVERY_FILE" "$JOIN_FILE"
  (umask 077 && awk -v a="$DISCOVERY_FILE" -v b="$JOIN_FILE" \
    'BEGIN { f = a } f == a && $0 == "---" { f = b; next } { print > f }' "$ANSWER_FILE")
  [[ -s "$DISCOVERY_FILE" && -s "$JOIN_FILE" ]] &&
    grep -q '^kind: JoinConfiguration$' "$JOIN_FILE"
}

# reason FILE: the join service's one-line reason (it contains no secret), printable only.
reason() {
  if [[ -f "$1" ]]; then head -c 300 "$1" | tr -d '\r\n' | tr -c '[:print:]' ' '; fi
}

# retry_after HEADERS: the Retry-After seconds of a response (empty when absent or not a
# number), at most JOIN_BACKOFF_MAX_SEC.
retry_after() {
  local v
  v="$(tr -d '\r' <"$1" 2>/dev/null |
    sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]:[[:space:]]*//p' | tail -n 1)"
  if [[ "$v" =~ ^[0-9]{1,6}$ ]]; then
    if ((v > JOIN_BACKOFF_MAX_SEC)); then v="$JOIN_BACKOFF_MAX_SEC"; fi
    printf '%s' "$v"
  fi
}

# backoff N: RETRY_SLEEP * 2^(N-1) seconds, at most JOIN_BACKOFF_MAX_SEC.
backoff() {
  local d="$RETRY_SLEEP" i
  for ((i = 1; i < $1 && d < JOIN_BACKOFF_MAX_SEC; i++)); do d=$((d * 2)); done
  if ((d > JOIN_BACKOFF_MAX_SEC)); then d="$JOIN_BACKOFF_MAX_SEC"; fi
  printf '%s' "$d"
}

# report_joined: POST /v1/joined with a fresh identity token, JOINED_ATTEMPTS times at most
# (409 "Node not registered yet" or "no podCIDR yet", 429, 503 and failures are retried
# JOINED_RETRY_SLEEP apart).
# Never fatal: nodewire also learns of the Node from the Kubernetes audit log.
report_joined() {
  local headers="${WORK}/joined.headers" body="${WORK}/joined.body" code i
  for ((i = 1; i <= JOINED_ATTEMPTS; i++)); do
    if auth_header; then
      code="$(join_post v1/joined "$body" "$headers")"
    else
      code="no identity token"
    fi
    case "$code" in
      200 | 202 | 204)
        log "reported the join to the join service"
        rm -f "$body" "$headers"
        return 0
        ;;
      401 | 403)
        log "the join service refused the report (HTTP ${code}: $(reason "$body")); nodewire will" \
          "find the Node through the Kubernetes audit log"
        rm -f "$body" "$headers"
        return 0
        ;;
    esac
    log "reporting the join (try ${i}/${JOINED_ATTEMPTS}): ${code} $(reason "$body"); retrying"
    rm -f "$body" "$headers"
    sleep "$JOINED_RETRY_SLEEP"
  done
  log "could not report the join after ${JOINED_ATTEMPTS} tries; nodewire will find the Node" \
    "through the Kubernetes audit log"
  return 0
}

# pull_join NAME: asks the join service for this VM's credential and JoinConfiguration until
# it gets one that kubeadm joins with, then reports the join. Every request has its own
# identity token; the key pair is made once.
pull_join() {
  local headers="${WORK}/join.headers" code n=0 conflicts=0 delay start="$SECONDS"
  mkdir -p "${ROOT}/etc/kubernetes"
  trap 'rm -f "$JOIN_FILE" "$DISCOVERY_FILE" "$ANSWER_FILE" "$KEY_FILE" "$CSR_FILE" \
    "$ID_TOKEN_FILE" "$AUTH_HEADER_FILE"' EXIT
  make_request "$1"
  while :; do
    if ((JOIN_WAIT_MAX_SEC > 0 && SECONDS - start > JOIN_WAIT_MAX_SEC)); then
      die "no join configuration from ${JOIN_URL} after ${JOIN_WAIT_MAX_SEC} s"
    fi
    n=$((n + 1))
    rm -f "$JOIN_FILE" "$DISCOVERY_FILE" "$ANSWER_FILE" "$headers"
    if ! auth_header; then
      sleep "$(backoff "$n")"
      continue
    fi
    # The answer (200) or a one-line reason, only in the file.
    code="$(join_post v1/join "$ANSWER_FILE" "$headers" "$CSR_FILE")"
    case "$code" in
      200)
        if ! split_answer; then
          log "join service: not a discovery kubeconfig and a JoinConfiguration; retrying"
          rm -f "$JOIN_FILE" "$DISCOVERY_FILE" "$ANSWER_FILE"
          sleep "$(backoff "$n")"
          continue
        fi
        rm -f "$ANSWER_FILE"
        log "credential and join configuration received from the join service"
        if try_join; then
          rm -f "$JOIN_FILE" "$DISCOVERY_FILE" "$KEY_FILE" "$CSR_FILE" "$headers"
          log "joined the cluster"
          report_joined
          return 0
        fi
        rm -f "$JOIN_FILE" "$DISCOVERY_FILE"
        log "kubeadm join failed ${JOIN_ATTEMPTS} times; asking the join service again"
        sleep "$(backoff "$n")"
        ;;
      400 | 401 | 403)
        die "the join service refused this VM (HTTP ${code}): $(reason "$ANSWER_FILE")"
        ;;
      409)
        if [[ -f "${ROOT}/etc/kubernetes/kubelet.conf" ]]; then
          log "join service: HTTP 409 ($(reason "$ANSWER_FILE")) and kubelet.conf exists: joined"
          rm -f "$ANSWER_FILE"
          return 0
        fi
        conflicts=$((conflicts + 1))
        if ((conflicts >= JOIN_CONFLICT_ATTEMPTS)); then
          die "the join service answered 409 ${conflicts} times: $(reason "$ANSWER_FILE")" \
            "(this VM's Node exists already without it having joined: delete the Node or" \
            "recreate the VM)"
        fi
        log "join service: HTTP 409 ($(reason "$ANSWER_FILE")); asking again with a new" \
          "identity token"
        rm -f "$ANSWER_FILE"
        sleep "$(backoff "$conflicts")"
        ;;
      *)
        # 429 (Retry-After), 503, 404 (not deployed yet: phase 1), unreachable, anything else.
        delay="$(retry_after "$headers")"
        [[ -n "$delay" ]] || delay="$(backoff "$n")"
        log "join service: HTTP ${code} ($(reason "$ANSWER_FILE")); retrying in ${delay} s"
        rm -f "$ANSWER_FILE"
        sleep "$delay"
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
  local config version cluster name cidr mode
  console_log
  setup_work
  config="$(md_get instance/attributes/nodewire-node-config)" ||
    die "instance/attributes/nodewire-node-config is missing"
  version="$(cfg "$config" kubernetes_version '^[0-9]+\.[0-9]+\.[0-9]+$')"
  cluster="$(cfg "$config" cluster_name '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')"
  name="$(md_get instance/name)" || die "instance/name is missing"
  # It goes into a certificate request's subject: a Compute Engine name only.
  [[ "$name" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "instance/name is malformed"
  mode="$(md_get instance/attributes/nodewire-join-mode)" || mode="pull"
  case "$mode" in
    pull)
      JOIN_URL="${NODEWIRE_JOIN_URL:-}"
      if [[ -z "$JOIN_URL" ]]; then
        JOIN_URL="$(md_get instance/attributes/nodewire-join-url)" ||
          die "pull mode: instance/attributes/nodewire-join-url is missing"
      fi
      [[ "$JOIN_URL" =~ $JOIN_URL_RE ]] ||
        die "pull mode: the join URL is malformed (https://HOST, no path)"
      ;;
    metadata) ;;
    *) die "instance/attributes/nodewire-join-mode: \"pull\" or \"metadata\", not \"${mode}\"" ;;
  esac
  log "node ${name}, cluster ${cluster}, Kubernetes ${version}, join mode ${mode}"

  guest_agent_no_ip_aliases
  kernel_prereqs
  install_base "$version"

  if [[ -f "${ROOT}/etc/kubernetes/kubelet.conf" ]]; then
    log "/etc/kubernetes/kubelet.conf exists: joined before, not joining again"
  elif [[ "$mode" == pull ]]; then
    pull_join "$name"
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
