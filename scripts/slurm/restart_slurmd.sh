#!/usr/bin/env bash
# The "node daemon lost for a while" fault (issue 7) on a cluster started by start_slurm.sh:
# stop ITS slurmd (the PID recorded in $SLURM_ROOT/pids), keep it down DOWN_SECONDS, start it
# again with the same command line, record the new PID, and wait until the node answers.
# Job steps already running (slurmstepd) are not touched; with DOWN_SECONDS beyond the
# config's SlurmdTimeout (30 s) slurmctld marks the node DOWN meanwhile and deals with its
# jobs as a node failure would (ReturnToService=2 brings the node back on registration).
#
# Usage: SLURM_ROOT=/tmp/slurm-ci scripts/slurm/restart_slurmd.sh [DOWN_SECONDS]  (default 10)
set -euo pipefail

[[ -n "${SLURM_ROOT:-}" ]] || { echo "restart_slurmd: set SLURM_ROOT" >&2; exit 2; }
DOWN="${1:-10}"
[[ "$DOWN" =~ ^[0-9]+$ ]] || { echo "restart_slurmd: DOWN_SECONDS '$DOWN' must be an integer" >&2; exit 2; }
ROOT="$(realpath -m "$SLURM_ROOT")"
export SLURM_CONF="$ROOT/etc/slurm.conf"
HOST="$(sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$SLURM_CONF" | head -1)"
[[ -n "$HOST" ]] || { echo "restart_slurmd: no NodeName in $SLURM_CONF" >&2; exit 1; }
log() { printf '[restart_slurmd %s] %s\n' "$(date +%T)" "$*"; }
pid_alive() {  # same check as start_slurm.sh: the PID still runs the recorded program
  local stat
  stat="$(cat "/proc/$2/stat" 2>/dev/null)" || return 1
  [[ "$stat" == "$2 ($1) "* && "$stat" != "$2 ($1) Z"* ]]
}

old="$(awk '$1 == "slurmd" {print $2}' "$ROOT/pids")"
pid_alive slurmd "$old" || { echo "restart_slurmd: recorded slurmd '$old' is not running" >&2; exit 1; }
kill -TERM "$old"
for _ in $(seq 100); do pid_alive slurmd "$old" || break; sleep 0.1; done
if pid_alive slurmd "$old"; then kill -KILL "$old"; sleep 0.5; fi
log "slurmd $old stopped; down for $DOWN s"
sleep "$DOWN"
log "node state while slurmd was down: $(sinfo -h -N -o '%T' 2>/dev/null | head -1)"

nohup slurmd -D -N "$HOST" -f "$SLURM_CONF" >> "$ROOT/log/slurmd.out" 2>&1 < /dev/null &
new=$!
sed -i "s/^slurmd .*/slurmd $new/" "$ROOT/pids"
state=""
for _ in $(seq 300); do
  kill -0 "$new" 2>/dev/null || { tail -n 20 "$ROOT/log/slurmd.out" >&2; exit 1; }
  state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1)"
  # a trailing '*' means not responding; down/unknown: not registered yet
  [[ -n "$state" && "$state" != *'*' && "$state" != down* && "$state" != unknown* ]] && break
  sleep 0.2
done
log "slurmd up again (pid $new), node $HOST $state"
