#!/bin/sh
# Run a command in a throw-away network namespace (plus a private mount namespace) where
# nothing but loopback can be reached. Needs root (unshare --net).
#
# Inside:
#   * lo is up (127.0.0.1, ::1). Everything the tests start in here (SLURM daemons, Ray,
#     torch rendezvous) has its own private loopback, separate from the host's.
#   * a fake "eth" (veth pair with no outside link) carries 198.51.100.7 (TEST-NET-2) and
#     the default route, so code that asks "which IP reaches the world" (Ray does) sees a
#     non-loopback address exactly as on a real host, yet no packet can leave the machine:
#     DNS, metadata and other outward requests just time out. SANDBOX_FAKE_ETH=0 leaves it
#     out (then outward connects fail at once with ENETUNREACH).
#   * /etc/hosts gains "::ffff:127.0.0.1 localhost" (a bind mount of a patched copy, visible
#     only inside; SANDBOX_HOSTS_FIX=0 turns it off). torch's c10d TCPStore calls
#     getnameinfo() on each peer, which is the IPv4-mapped ::ffff:127.0.0.1; the usual
#     "127.0.0.1 localhost" line does not match that address family, so glibc asks DNS
#     (PTR 1.0.0.127.in-addr.arpa) and each DDP rendezvous waits ~5 s for DNS time-outs.
#     It also names the two test hosts of the multi-node tests (tests/multinode.py):
#     "127.0.0.2 mnode1" and "127.0.0.3 mnode2", with their ::ffff: forms for the same
#     reason (SLURM node names must resolve: submitit's MASTER_ADDR is the first node's name).
#   * DINO_ABLATE_NETNS_SANDBOX=1 is exported, so tests can tell where they run.
#
# The process tree is not isolated otherwise (same PIDs, files and users); daemons started
# inside keep running in the namespace until they exit, and can be stopped from outside
# by PID.
#
# Usage: scripts/netns_sandbox.sh CMD [ARGS...]
set -eu
if [ $# -eq 0 ]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "netns_sandbox: needs root (unshare --net)" >&2
  exit 1
fi
export SANDBOX_HOSTS_FIX="${SANDBOX_HOSTS_FIX:-1}"
export SANDBOX_FAKE_ETH="${SANDBOX_FAKE_ETH:-1}"
export DINO_ABLATE_NETNS_SANDBOX=1
# The inner script runs as the first process in the new namespaces, then execs CMD.
exec unshare --net --mount --propagation private sh -euc '
  ip link set lo up
  if [ "$SANDBOX_FAKE_ETH" = 1 ]; then
    ip link add veth0 type veth peer name veth1
    ip addr add 198.51.100.7/24 dev veth0
    ip link set veth0 up
    ip link set veth1 up
    ip route add default via 198.51.100.1 dev veth0
  fi
  if [ "$SANDBOX_HOSTS_FIX" = 1 ]; then
    # each line only if no line for its address exists yet; no mount when none is missing
    # (a sandbox inside a sandbox already has them)
    missing=""
    for line in "::ffff:127.0.0.1 localhost" \
                "127.0.0.2 mnode1" "::ffff:127.0.0.2 mnode1" \
                "127.0.0.3 mnode2" "::ffff:127.0.0.3 mnode2"; do
      addr="${line%% *}"
      grep -qE "^[[:space:]]*$(echo "$addr" | sed "s/\./\\\\./g")[[:space:]]" /etc/hosts \
        || missing="$missing$line
"
    done
    if [ -n "$missing" ]; then
      hosts_copy="$(mktemp)"
      { cat /etc/hosts; printf "%s" "$missing"; } > "$hosts_copy"
      chmod 644 "$hosts_copy"
      mount --bind "$hosts_copy" /etc/hosts
      rm -f "$hosts_copy"   # the bind mount keeps the file alive; nothing to clean up later
    fi
  fi
  exec "$@"' netns_sandbox "$@"
