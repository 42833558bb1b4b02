#!/usr/bin/env bash
# The "node daemon lost for a while" fault (issue 7) on a cluster started by start_slurm.sh:
# stop ITS slurmd (the PID recorded in $SLURM_ROOT/pids), keep it down DOWN_SECONDS, start it
# again with the same command line, record the new PID, and wait until the node answers.
# Job steps already running (slurmstepd) are not touched; with DOWN_SECONDS beyond the
# config's SlurmdTimeout (30 s) slurmctld marks the node DOWN meanwhile and deals with its
# jobs as a node failure would (ReturnToService=2 brings the node back on registration).
#
# On a multi-node cluster (start_slurm.sh with SLURM_NODES), SLURM_NODE names the node (default:
# the first); its slurmd comes back in a fresh UTS namespace with the node's hostname.
#
# Usage: SLURM_ROOT=/tmp/slurm-ci [SLURM_NODE=mnode2] scripts/slurm/restart_slurmd.sh [DOWN_SECONDS]
#        (default 10). DOWN_SECONDS "down": keep it stopped until slurmctld reports the node
#        DOWN (at most 300 s), i.e. until its jobs have been dealt with as a node failure.
set -euo pipefail

[[ -n "${SLURM_ROOT:-}" ]] || { echo "restart_slurmd: set SLURM_ROOT" >&2; exit 2; }
DOWN="${1:-10}"
[[ "$DOWN" =~ ^[0-9]+$ || "$DOWN" == down ]] \
  || { echo "restart_slurmd: DOWN_SECONDS '$DOWN' must be an integer or 'down'" >&2; exit 2; }
ROOT="$(realpath -m "$SLURM_ROOT")"
export SLURM_CONF="$ROOT/etc/slurm.conf"
HOST="${SLURM_NODE:-$(sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$SLURM_CONF" | head -1)}"
[[ -n "$HOST" ]] || { echo "restart_slurmd: no NodeName in $SLURM_CONF" >&2; exit 1; }
grep -q "^NodeName=$HOST " "$SLURM_CONF" || { echo "restart_slurmd: no node $HOST in $SLURM_CONF" >&2; exit 2; }
NODES=$(grep -c '^NodeName=' "$SLURM_CONF")
log() { printf '[restart_slurmd %s] %s\n' "$(date +%T)" "$*"; }
pid_alive() {  # same check as start_slurm.sh: the PID still runs the recorded program
  local stat
  stat="$(cat "/proc/$2/stat" 2>/dev/null)" || return 1
  [[ "$stat" == "$2 ($1) "* && "$stat" != "$2 ($1) Z"* ]]
}

# "slurmd PID [NODE]" lines; one node: the only slurmd line
old="$(awk -v h="$HOST" -v n="$NODES" '$1 == "slurmd" && (n == 1 || $3 == h) {print $2}' "$ROOT/pids")"
pid_alive slurmd "$old" || { echo "restart_slurmd: recorded slurmd '$old' is not running" >&2; exit 1; }
kill -TERM "$old"
for _ in $(seq 100); do pid_alive slurmd "$old" || break; sleep 0.1; done
if pid_alive slurmd "$old"; then kill -KILL "$old"; sleep 0.5; fi
if [[ "$DOWN" == down ]]; then
  log "slurmd $old stopped; waiting for node $HOST to be DOWN"
  t0=$(date +%s)
  until sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | grep -q '^down'; do
    (( $(date +%s) - t0 < 300 )) || { echo "restart_slurmd: node $HOST not DOWN after 300 s" >&2; break; }
    sleep 1
  done
  log "node $HOST DOWN after $(( $(date +%s) - t0 )) s"
else
  log "slurmd $old stopped; down for $DOWN s"
  sleep "$DOWN"
fi
log "node state while slurmd was down: $(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1)"

if [[ "$NODES" == 1 ]]; then
  out="$ROOT/log/slurmd.out"
  nohup slurmd -D -N "$HOST" -f "$SLURM_CONF" >> "$out" 2>&1 < /dev/null &
else
  out="$ROOT/log/slurmd.$HOST.out"
  nohup unshare --uts sh -c 'hostname "$1" && exec slurmd -D -N "$1" -f "$2"' sh \
    "$HOST" "$SLURM_CONF" >> "$out" 2>&1 < /dev/null &
fi
new=$!
sed -i "s/^slurmd $old\b.*/slurmd $new $HOST/" "$ROOT/pids"
state=""
for _ in $(seq 300); do
  kill -0 "$new" 2>/dev/null || { tail -n 20 "$out" >&2; exit 1; }
  state="$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1)"
  # a trailing '*' means not responding; down/unknown: not registered yet
  [[ -n "$state" && "$state" != *'*' && "$state" != down* && "$state" != unknown* ]] && break
  sleep 0.2
done
log "slurmd up again (pid $new), node $HOST $state"
