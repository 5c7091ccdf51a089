#!/usr/bin/env bash
# Runs every fuzz target (or the ones named after SECONDS) for SECONDS (default 600) one after
# the other, on one core, and prints each target's executions and findings. Needs nightly Rust
# and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   bash fuzz/run-all.sh 600 [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
targets=("${@:2}")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(push_envelope cloudevent instance_event node_events step_message id_token values)
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/run.log"
  status=0
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || status=$?
  execs=$(grep -Eo '^Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1 || true)
  crashes=$(find "artifacts/$t" -maxdepth 1 \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  echo "$t: exit $status, ${execs:-?} executions in ${secs}s, $crashes finding(s), corpus $(find "corpus/$t" -type f | wc -l) inputs"
done
