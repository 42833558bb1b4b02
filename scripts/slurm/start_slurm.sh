#!/usr/bin/env bash
# Start a throw-away single-node Slurm (Debian 12's Slurm 22.05: munged + slurmctld + slurmd)
# whose state, logs and sockets all live under $SLURM_ROOT and whose daemons listen on
# 127.0.0.1 only. No systemd, no cgroups, no accounting database. Must run as root.
#
# Usage:
#   SLURM_ROOT=/tmp/slurm-ci scripts/slurm/start_slurm.sh    # SLURM_ROOT unset: fresh temp dir
#   source /tmp/slurm-ci/env.sh        # SLURM_CONF, SLURM_ROOT, PATH (sacct shim first)
#   SLURM_ROOT=/tmp/slurm-ci scripts/slurm/stop_slurm.sh
#
# Optional environment:
#   SLURM_CTLD_PORT / SLURM_SLURMD_PORT  ports on 127.0.0.1 (6817 / 6818)
#   SLURM_CRED_EXPIRE=5    seconds; also the delay before a requeued job may start again
#   SLURM_NODENAME=localhost   node and controller name; must resolve to 127.0.0.1
#   SLURM_LINK_ETC=1       symlink /etc/slurm/slurm.conf to our config (see step 3)
#   SLURM_INSTALL=1        apt-install the packages if slurmctld/munged are missing
#
# Exit status 0 also when a healthy cluster from the same SLURM_ROOT is already running
# (it says so and changes nothing); 1 when one is half running (run stop_slurm.sh first).
# On any failure it stops whatever it had started, by recorded PID.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${SLURM_ROOT:-}" ]]; then
  SLURM_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/slurm.XXXXXX")"
fi
ROOT="$(realpath -m "$SLURM_ROOT")"
CTLD_PORT="${SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_SLURMD_PORT:-6818}"
CRED_EXPIRE="${SLURM_CRED_EXPIRE:-5}"
HOST="${SLURM_NODENAME:-localhost}"
LINK_ETC="${SLURM_LINK_ETC:-1}"
TEMPLATE="$HERE/slurm.conf.template"
SHIM_DIR="$HERE/bin"
CONF="$ROOT/etc/slurm.conf"
MUNGE_SOCKET="$ROOT/munge/munge.socket.2"
t0=$(date +%s%N)
log() {
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '[start_slurm %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
die() { echo "start_slurm: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd and munged run as root here)"

# A recorded PID counts as alive only if it still runs the program we recorded, so a PID
# reused by some other process after a reboot or crash is never mistaken for ours.
pid_alive() {
  local stat
  stat="$(cat "/proc/$2/stat" 2>/dev/null)" || return 1
  # "PID (comm) STATE ...": same program, and not a zombie waiting to be reaped.
  [[ "$stat" == "$2 ($1) "* && "$stat" != "$2 ($1) Z"* ]]
}

# ---------------------------------------------------------------- 0. already running?
if [[ -s "$ROOT/pids" ]]; then
  alive=(); dead=()
  while read -r name pid; do
    if pid_alive "$name" "$pid"; then alive+=("$name:$pid"); else dead+=("$name:$pid"); fi
  done < "$ROOT/pids"
  if [[ ${#alive[@]} -gt 0 && ${#dead[@]} -eq 0 ]] \
      && SLURM_CONF="$CONF" scontrol ping 2>/dev/null | grep -q 'is UP'; then
    echo "start_slurm: a cluster from $ROOT is already running (${alive[*]}); nothing to do"
    echo "start_slurm: source $ROOT/env.sh to use it"
    exit 0
  fi
  if [[ ${#alive[@]} -gt 0 ]]; then
    die "a cluster from $ROOT is partly running (alive: ${alive[*]}; dead: ${dead[*]}); run SLURM_ROOT=$ROOT $HERE/stop_slurm.sh first"
  fi
  log "stale $ROOT/pids (no recorded daemon alive); starting afresh"
fi

# ---------------------------------------------------------------- 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  [[ "${SLURM_INSTALL:-1}" == 1 ]] || die "slurm/munge not installed and SLURM_INSTALL=0"
  "$HERE/../install_system_deps.sh" slurm
  log "packages installed"
fi

# ---------------------------------------------------------------- 2. layout and checks
# NoInAddrAny binds to the address the node name resolves to; it must be IPv4 loopback.
getent ahostsv4 "$HOST" | head -1 | grep -q '^127\.' \
  || die "node name '$HOST' does not resolve to a 127.x address (see /etc/hosts)"
if command -v ss >/dev/null; then
  for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    [[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]] \
      || die "port $port is already in use (another Slurm?); set SLURM_CTLD_PORT/SLURM_SLURMD_PORT"
  done
fi
mkdir -p "$ROOT"/{etc,state,spool,log,run,munge}
# munged's socket directory must be o+x or non-root clients cannot reach it.
chmod 755 "$ROOT" "$ROOT"/{etc,state,spool,log,run,munge}
: > "$ROOT/pids"
trap 'rc=$?; if [[ $rc -ne 0 ]]; then
        echo "start_slurm: failed (rc=$rc); stopping what was started; logs in $ROOT/log" >&2
        SLURM_ROOT="$ROOT" "$HERE/stop_slurm.sh" >&2 || true
      fi' EXIT

# ---------------------------------------------------------------- 3. slurm.conf + env.sh
# slurmd -C prints the hardware line, e.g.
#   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
hw="$(slurmd -C | head -1)"
hw_get() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
CPUS=$(hw_get CPUs); BOARDS=$(hw_get Boards); SOCKETS=$(hw_get SocketsPerBoard)
CORES=$(hw_get CoresPerSocket); THREADS=$(hw_get ThreadsPerCore); MEM=$(hw_get RealMemory)
[[ -n "$CPUS" && -n "$MEM" ]] || die "could not parse 'slurmd -C' output: $hw"
MEM=$(( MEM * 95 / 100 ))
DEFMEM=$(( MEM / CPUS ))
sed -e "s|@ROOT@|$ROOT|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@BOARDS@|$BOARDS|g" -e "s|@SOCKETS@|$SOCKETS|g" -e "s|@CORES@|$CORES|g" \
    -e "s|@THREADS@|$THREADS|g" -e "s|@MEM@|$MEM|g" -e "s|@DEFMEM@|$DEFMEM|g" \
    -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
    -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" "$TEMPLATE" > "$CONF"
export SLURM_CONF="$CONF"
cat > "$ROOT/env.sh" <<ENV
# Written by start_slurm.sh. Source it in the shell that submits jobs.
export SLURM_ROOT="$ROOT"
export SLURM_CONF="$CONF"
# The sacct shim must come first: submitit learns job states only through sacct.
export PATH="$SHIM_DIR:\$PATH"
ENV
# A Slurm client that finds neither $SLURM_CONF nor /etc/slurm/slurm.conf switches to
# "configless" mode and looks the controller up with a DNS SRV query (traffic to the
# resolver). With the symlink, clients started without our env stay local too. An
# existing real file, or a symlink to another live cluster's config, is left alone: any
# readable config prevents the lookup.
if [[ "$LINK_ETC" == 1 ]]; then
  mkdir -p /etc/slurm
  if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    log "NOTE: /etc/slurm/slurm.conf is a real file, left alone (clients need SLURM_CONF)"
  elif [[ -L /etc/slurm/slurm.conf && -e /etc/slurm/slurm.conf \
          && "$(readlink /etc/slurm/slurm.conf)" != "$CONF" ]]; then
    log "NOTE: /etc/slurm/slurm.conf links to $(readlink /etc/slurm/slurm.conf), left alone"
  else
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  fi
fi
log "wrote $CONF ($HOST CPUs=$CPUS RealMemory=$MEM ports $CTLD_PORT/$SLURMD_PORT)"

# ---------------------------------------------------------------- 4. munged
# Daemons run in the foreground (munged -F, slurm* -D) under nohup, so $! is the daemon's
# own PID and stop_slurm.sh can stop exactly these processes.
if [[ ! -s "$ROOT/munge/munge.key" ]]; then
  dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$ROOT/munge/munge.key"
nohup munged -F --key-file="$ROOT/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$ROOT/run/munged.pid" --log-file="$ROOT/log/munged.log" \
    --seed-file="$ROOT/munge/munged.seed" > "$ROOT/log/munged.out" 2>&1 < /dev/null &
echo "munged $!" >> "$ROOT/pids"
for _ in $(seq 50); do [[ -S "$MUNGE_SOCKET" ]] && break; sleep 0.1; done
if ! munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
  # Typical cause: a directory above $ROOT lacks o+x (munged insists on it).
  grep -E 'Error|Warning' "$ROOT/log/munged.out" >&2 || true
  die "munge self-test failed; see $ROOT/log/munged.out"
fi
log "munged up"

# ---------------------------------------------------------------- 5. slurmctld, slurmd
# -i: do not abort on unreadable state from an earlier run of the same SLURM_ROOT.
nohup slurmctld -D -i -f "$CONF" > "$ROOT/log/slurmctld.out" 2>&1 < /dev/null &
ctld_pid=$!
echo "slurmctld $ctld_pid" >> "$ROOT/pids"
for _ in $(seq 100); do
  scontrol ping 2>/dev/null | grep -q 'is UP' && break
  kill -0 "$ctld_pid" 2>/dev/null || break
  sleep 0.2
done
if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
  tail -n 20 "$ROOT/log/slurmctld.out" "$ROOT/log/slurmctld.log" >&2 2>/dev/null || true
  die "slurmctld did not come up"
fi
log "slurmctld up (pid $ctld_pid)"

nohup slurmd -D -N "$HOST" -f "$CONF" > "$ROOT/log/slurmd.out" 2>&1 < /dev/null &
slurmd_pid=$!
echo "slurmd $slurmd_pid" >> "$ROOT/pids"
state=""
for _ in $(seq 150); do
  state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1)"
  [[ "$state" == idle ]] && break
  kill -0 "$slurmd_pid" 2>/dev/null || break
  sleep 0.2
done
if [[ "$state" != idle ]]; then
  scontrol show node >&2 || true
  tail -n 20 "$ROOT/log/slurmd.out" "$ROOT/log/slurmd.log" >&2 2>/dev/null || true
  die "node state is '$state', expected idle"
fi
log "slurmd up (pid $slurmd_pid), node $HOST idle"
echo "start_slurm: cluster running; PIDs in $ROOT/pids"
echo "start_slurm: source $ROOT/env.sh   # or: export SLURM_ROOT=$ROOT"
