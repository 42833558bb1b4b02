#!/usr/bin/env bash
# Start a throw-away Slurm (Debian 12's Slurm 22.05: munged + slurmctld + slurmd) whose state,
# logs and sockets all live under $SLURM_ROOT and whose daemons listen on 127.x addresses
# only. No systemd, no cgroups, no accounting database. Must run as root.
#
# One node (default): node `localhost` on 127.0.0.1 with the machine's CPUs and memory.
# SLURM_NODES=N (N >= 2): N nodes mnode1..mnodeN on 127.0.0.2, 127.0.0.3, ..., each its own
# slurmd (own port, spool/pid/log file and, through a UTS namespace, its own hostname) with an
# equal share of the CPUs and memory: N hosts on one machine. Every node name must resolve to
# its address (scripts/netns_sandbox.sh adds "127.0.0.2 mnode1" and "127.0.0.3 mnode2" to the
# sandbox's /etc/hosts).
#
# Usage:
#   SLURM_ROOT=/tmp/slurm-ci scripts/slurm/start_slurm.sh    # SLURM_ROOT unset: fresh temp dir
#   source /tmp/slurm-ci/env.sh        # SLURM_CONF, SLURM_ROOT, PATH (sacct shim first)
#   SLURM_ROOT=/tmp/slurm-ci scripts/slurm/stop_slurm.sh
#
# Optional environment:
#   SLURM_CTLD_PORT / SLURM_SLURMD_PORT  ports on 127.0.0.1 (6817 / 6818)
#   SLURM_NODES=1          number of nodes (see above)
#   SLURM_SLURMD_PORTS     several nodes: their slurmd ports, space-separated
#                          (default SLURM_SLURMD_PORT, +1, ...)
#   SLURM_SLURMD_TIMEOUT=30   seconds before a silent slurmd's node is DOWN
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
NODES="${SLURM_NODES:-1}"
SLURMD_TIMEOUT="${SLURM_SLURMD_TIMEOUT:-30}"
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$NODES" -le 200 ]] || { echo "start_slurm: SLURM_NODES '$NODES' must be 1..200" >&2; exit 2; }
# node names, addresses and slurmd ports
if [[ "$NODES" == 1 ]]; then
  NODE_NAMES=("$HOST"); NODE_ADDRS=(127.0.0.1); NODE_PORTS=("$SLURMD_PORT")
else
  NODE_NAMES=(); NODE_ADDRS=(); NODE_PORTS=()
  read -r -a given_ports <<< "${SLURM_SLURMD_PORTS:-}"
  for i in $(seq 1 "$NODES"); do
    NODE_NAMES+=("mnode$i"); NODE_ADDRS+=("127.0.0.$((i + 1))")
    NODE_PORTS+=("${given_ports[$((i - 1))]:-$((SLURMD_PORT + i - 1))}")
  done
fi
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
  while read -r name pid _; do
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
if [[ "$NODES" -gt 1 ]]; then
  command -v unshare >/dev/null || die "unshare (util-linux) is needed for the nodes' hostnames"
  for i in "${!NODE_NAMES[@]}"; do
    got="$(getent ahostsv4 "${NODE_NAMES[$i]}" | awk 'NR == 1 {print $1}')"
    [[ "$got" == "${NODE_ADDRS[$i]}" ]] \
      || die "node name '${NODE_NAMES[$i]}' resolves to '${got:-nothing}', expected ${NODE_ADDRS[$i]}: add '${NODE_ADDRS[$i]} ${NODE_NAMES[$i]}' to /etc/hosts (scripts/netns_sandbox.sh does, inside its sandbox)"
  done
fi
if command -v ss >/dev/null; then
  for port in "$CTLD_PORT" "${NODE_PORTS[@]}"; do
    [[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]] \
      || die "port $port is already in use (another Slurm?); set SLURM_CTLD_PORT/SLURM_SLURMD_PORT"
  done
fi
mkdir -p "$ROOT"/{etc,state,spool,log,run,munge}
if [[ "$NODES" -gt 1 ]]; then
  for name in "${NODE_NAMES[@]}"; do mkdir -p "$ROOT/spool/$name"; done
  chmod 755 "$ROOT"/spool/*
fi
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
if [[ "$NODES" -gt 1 ]]; then  # an equal share per node, as one socket of that many cores
  CPUS=$(( CPUS / NODES > 0 ? CPUS / NODES : 1 )); MEM=$(( MEM / NODES ))
  BOARDS=1; SOCKETS=1; CORES=$CPUS; THREADS=1
  PER_NODE_DIR=/%n; PER_NODE=.%n; COMM=NoCtldInAddrAny
else
  PER_NODE_DIR=""; PER_NODE=""; COMM=NoCtldInAddrAny,NoInAddrAny
fi
DEFMEM=$(( MEM / CPUS ))
sed -e "s|@ROOT@|$ROOT|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@BOARDS@|$BOARDS|g" -e "s|@SOCKETS@|$SOCKETS|g" -e "s|@CORES@|$CORES|g" \
    -e "s|@THREADS@|$THREADS|g" -e "s|@MEM@|$MEM|g" -e "s|@DEFMEM@|$DEFMEM|g" \
    -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
    -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@SLURMD_TIMEOUT@|$SLURMD_TIMEOUT|g" \
    -e "s|@PER_NODE_DIR@|$PER_NODE_DIR|g" -e "s|@PER_NODE@|$PER_NODE|g" -e "s|@COMM@|$COMM|g" "$TEMPLATE" > "$CONF"
{
  for i in "${!NODE_NAMES[@]}"; do
    port=""; [[ "$NODES" -gt 1 ]] && port=" Port=${NODE_PORTS[$i]}"
    echo "NodeName=${NODE_NAMES[$i]} NodeAddr=${NODE_ADDRS[$i]} NodeHostname=${NODE_NAMES[$i]}$port CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODE_NAMES[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} >> "$CONF"
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
log "wrote $CONF (${NODE_NAMES[*]}: CPUs=$CPUS RealMemory=$MEM each; ports $CTLD_PORT/${NODE_PORTS[*]})"

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

for i in "${!NODE_NAMES[@]}"; do
  name="${NODE_NAMES[$i]}"
  if [[ "$NODES" == 1 ]]; then
    nohup slurmd -D -N "$name" -f "$CONF" > "$ROOT/log/slurmd.out" 2>&1 < /dev/null &
  else
    # its own UTS namespace: the node's processes (its jobs included) see hostname $name.
    # unshare and sh exec, so $! is slurmd's own PID.
    nohup unshare --uts sh -c 'hostname "$1" && exec slurmd -D -N "$1" -f "$2"' sh \
      "$name" "$CONF" > "$ROOT/log/slurmd.$name.out" 2>&1 < /dev/null &
  fi
  echo "slurmd $! $name" >> "$ROOT/pids"
done
states=""
for _ in $(seq 150); do
  states="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ')"
  [[ "$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)" -eq "$NODES" ]] && break
  while read -r _ pid _; do kill -0 "$pid" 2>/dev/null || break 2; done < <(grep '^slurmd ' "$ROOT/pids")
  sleep 0.2
done
if [[ "$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)" -ne "$NODES" ]]; then
  scontrol show node >&2 || true
  tail -n 20 "$ROOT"/log/slurmd*.out "$ROOT"/log/slurmd*.log >&2 2>/dev/null || true
  die "node states are '$states', expected $NODES idle"
fi
log "slurmd up ($(awk '$1 == "slurmd" {printf "%s pid %s, ", $3, $2}' "$ROOT/pids")all idle)"
echo "start_slurm: cluster running; PIDs in $ROOT/pids"
echo "start_slurm: source $ROOT/env.sh   # or: export SLURM_ROOT=$ROOT"
