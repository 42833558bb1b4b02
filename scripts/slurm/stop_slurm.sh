#!/usr/bin/env bash
# Stop a cluster started by start_slurm.sh: cancel its jobs, then stop ONLY the daemon PIDs
# recorded in $SLURM_ROOT/pids (checking that each PID still runs the recorded program),
# and remove /etc/slurm/slurm.conf if it is our symlink.
#
# Usage: SLURM_ROOT=/tmp/slurm-ci scripts/slurm/stop_slurm.sh
# Safe to run twice; exits 0 when there is nothing to stop.
set -uo pipefail

[[ -n "${SLURM_ROOT:-}" ]] || { echo "stop_slurm: set SLURM_ROOT" >&2; exit 2; }
ROOT="$(realpath -m "$SLURM_ROOT")"
export SLURM_CONF="$ROOT/etc/slurm.conf"
t0=$(date +%s%N)
log() {
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '[stop_slurm %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
pid_alive() {
  local stat
  stat="$(cat "/proc/$2/stat" 2>/dev/null)" || return 1
  # "PID (comm) STATE ...": same program, and not a zombie waiting to be reaped.
  [[ "$stat" == "$2 ($1) "* && "$stat" != "$2 ($1) Z"* ]]
}

unlink_etc() {
  if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$SLURM_CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
  fi
}
if [[ ! -s "$ROOT/pids" ]]; then
  log "no $ROOT/pids: nothing to stop"
  unlink_etc
  exit 0
fi
pid_of() { awk -v n="$1" '$1 == n {print $2}' "$ROOT/pids"; }  # one line per daemon
# Live (not zombie) slurmstepd processes of THIS cluster: slurmd passes its environment,
# including our SLURM_CONF, on to the slurmstepd it double-forks for each job step.
our_stepds() {
  local dir stat
  for dir in /proc/[0-9]*; do
    stat="$(cat "$dir/stat" 2>/dev/null)" || continue
    [[ "$stat" == *" (slurmstepd) "[!Z]* ]] || continue
    tr '\0' '\n' < "$dir/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF" \
      && echo "${dir#/proc/}"
  done
}

# 1. Cancel remaining jobs while the controller is up, so that their slurmstepd processes
#    (double-forked by slurmd, not our children) end on their own.
if pid_alive slurmctld "$(pid_of slurmctld | head -1)" && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  jobs="$(squeue -h -t PD,R,CG,S,RQ,RS,RF -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
  if [[ -n "${jobs// /}" ]]; then
    # shellcheck disable=SC2086
    scancel --full --quiet $jobs 2>/dev/null || true
    for _ in $(seq 50); do [[ -z "$(squeue -h -t R,CG 2>/dev/null)" ]] && break; sleep 0.2; done
    log "cancelled jobs: $jobs"
  fi
fi
# Job steps that just ended (or were cancelled) need a moment to clean up; slurmd must still
# be there to hear from them.
for _ in $(seq 50); do [[ -z "$(our_stepds)" ]] && break; sleep 0.2; done

# 2. SIGTERM, wait up to 10 s, then SIGKILL. slurmctld first: stopped after slurmd it
#    spends ~5 s on "hung communications". slurmd and munged then stop in parallel.
stop_pids() {
  local name pid waiting=()
  for name in "$@"; do
    for pid in $(pid_of "$name"); do  # several slurmd on a multi-node cluster
      if pid_alive "$name" "$pid"; then
        kill -TERM "$pid" 2>/dev/null && waiting+=("$name:$pid")
      else
        log "$name (pid $pid) was not running"
      fi
    done
  done
  local entry
  for entry in "${waiting[@]}"; do
    name="${entry%%:*}"; pid="${entry##*:}"
    for _ in $(seq 100); do pid_alive "$name" "$pid" || break; sleep 0.1; done
    if pid_alive "$name" "$pid"; then
      log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  done
}
stop_pids slurmctld
stop_pids slurmd munged

# 3. Report, but do not kill, this cluster's slurmstepd that outlived the daemons (they and
#    their job processes were not started by start_slurm.sh).
left="$(our_stepds | tr '\n' ' ')"
[[ -z "${left// /}" ]] || log "WARNING: slurmstepd of this cluster still running (pids $left)"
mv "$ROOT/pids" "$ROOT/pids.stopped"
unlink_etc
exit 0
