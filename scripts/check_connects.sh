#!/usr/bin/env bash
# Run a command under `strace -f` and list every connect()/sendto()/sendmsg()/sendmmsg()
# it, or any process it starts, aimed at an IPv4/IPv6 address outside loopback
# (127.0.0.0/8, ::1, ::ffff:127.x). Unix, netlink and already-connected sends (no address)
# are not network destinations and are ignored. The unspecified addresses 0.0.0.0 and ::
# mean "this host" as a destination (Linux connects them to loopback; nothing goes on the
# wire), so they are listed for information but do not fail the check. slurmctld does this:
# it sends SRUN_JOB_COMPLETE to 0.0.0.0:<srun port>.
#
# Usage: scripts/check_connects.sh [-o TRACE_FILE] [--report-only] [--] CMD [ARGS...]
#
# Exit status:
#   3        non-loopback destinations were found (the default; --report-only only lists them)
#   2        usage error, strace missing, or this shell is already being traced (ptrace
#            allows one tracer per process, so check_connects.sh cannot be nested)
#   else     the exit status of CMD
#
# The trace (also execve and clone, to name the program behind each attempt) is written to
# TRACE_FILE, or to a temporary file that is deleted when nothing was found.
#
# It only SEES attempts; it does not stop them. Combine it with scripts/netns_sandbox.sh
# (scripts/check_loopback.sh does both) so that nothing can leave the machine either.
set -uo pipefail

trace=""; report_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o) trace="${2:?-o needs a file}"; shift 2;;
    --report-only) report_only=1; shift;;
    --) shift; break;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0;;
    -*) echo "check_connects: unknown option $1" >&2; exit 2;;
    *) break;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [-o TRACE_FILE] [--report-only] [--] CMD [ARGS...]" >&2; exit 2; }
command -v strace >/dev/null \
  || { echo "check_connects: strace missing; run scripts/install_system_deps.sh net" >&2; exit 2; }
if [[ "$(awk '/^TracerPid:/ {print $2}' /proc/$$/status)" != 0 ]]; then
  echo "check_connects: already running under a tracer (nested check_connects.sh?); cannot trace" >&2
  exit 2
fi

keep_trace=1
if [[ -z "$trace" ]]; then
  trace="$(mktemp "${TMPDIR:-/tmp}/check_connects.XXXXXX.trace")"
  keep_trace=0
fi
# --seccomp-bpf stops the tracee only at the traced syscalls instead of at every syscall,
# which keeps the overhead on torch/Ray workloads small. Fall back if it is unsupported.
seccomp=(--seccomp-bpf)
strace -f -qq "${seccomp[@]}" -e trace=connect -o /dev/null true 2>/dev/null || seccomp=()

strace -f -qq "${seccomp[@]}" -e signal=none \
  -e trace=connect,sendto,sendmsg,sendmmsg,execve,clone,clone3,fork,vfork \
  -o "$trace" -- "$@"
rc=$?

# strace -f lines start with the thread id. execve lines name the program a tid runs;
# clone/fork results hand the parent's name on to the new tid, unless the child's execve
# was logged first (its "fresh" name wins). Only the destination of the syscall itself
# counts (sin_addr / sin6_addr of the sockaddr), not addresses inside a netlink payload.
report="$(awk '
  function loopback(a) { return a ~ /^127\./ || a == "::1" || a ~ /^::ffff:127\./ }
  function this_host(a) { return a == "0.0.0.0" || a == "::" || a == "::ffff:0.0.0.0" }
  {
    tid = $1; line = $0
    if (line ~ /execve\("/ && line !~ /= -1 /) {
      match(line, /execve\("[^"]*"/); prog[tid] = substr(line, RSTART + 8, RLENGTH - 9)
      fresh[tid] = 1
    }
    if (line ~ /(clone3?|v?fork)(\(| resumed>)/ && match(line, /= [0-9]+$/)) {
      child = substr(line, RSTART + 2)
      if (!fresh[child]) prog[child] = (tid in prog) ? prog[tid] : "?"
      fresh[child] = 0
    }
    if (match(line, /(connect|sendto|sendmsg|sendmmsg)\(/)) {
      call = substr(line, RSTART, RLENGTH - 1); addr = ""
      if (match(line, /sin_addr=inet_addr\("[^"]*"\)/))
        addr = substr(line, RSTART + 20, RLENGTH - 22)
      else if (match(line, /inet_pton\(AF_INET6, "[^"]*", &sin6_addr\)/))
        addr = substr(line, RSTART + 21, RLENGTH - 35)
      if (addr == "" || loopback(addr)) next
      port = "?"
      if (match(line, /port=htons\([0-9]+\)/)) port = substr(line, RSTART + 11, RLENGTH - 12)
      kind = this_host(addr) ? "HOST" : "FAR"
      note = ""
      # The kernel refused the call before anything left (no route, e.g. Chromium'"'"'s UDP
      # probe of IPv6 reachability in the sandbox, which has no IPv6 route): nothing was sent.
      if (line ~ /= -1 ENETUNREACH/) { kind = "HOST"; note = " (ENETUNREACH: nothing sent)" }
      what = call " " addr " port " port
      who = "  by " ((tid in prog) ? prog[tid] : "?")
      if (line ~ /<unfinished \.\.\.>$/ && kind == "FAR") {
        pending[tid] = what SUBSEP who   # the result arrives on a later "resumed" line
        next
      }
      seen[kind " " what note who]++
      next
    }
    if (line ~ /<\.\.\. (connect|sendto|sendmsg|sendmmsg) resumed>/ && (tid in pending)) {
      split(pending[tid], parts, SUBSEP); delete pending[tid]
      if (line ~ /= -1 ENETUNREACH/) seen["HOST " parts[1] " (ENETUNREACH: nothing sent)" parts[2]]++
      else seen["FAR " parts[1] parts[2]]++
    }
  }
  END {
    for (t in pending) { split(pending[t], parts, SUBSEP); seen["FAR " parts[1] parts[2]]++ }
    for (k in seen) printf "%s %d %s\n", substr(k, 1, index(k, " ") - 1), seen[k], substr(k, index(k, " ") + 1) }
' "$trace")"
far="$(sed -n 's/^FAR //p' <<<"$report" | sort -rn | awk '{printf "%7d  ", $1; $1 = ""; print substr($0, 2)}')"
this_host="$(sed -n 's/^HOST //p' <<<"$report" | sort -rn | awk '{printf "%7d  ", $1; $1 = ""; print substr($0, 2)}')"
if [[ -n "$this_host" ]]; then
  echo "check_connects: destinations 0.0.0.0/:: (this host, allowed):" >&2
  echo "$this_host" >&2
fi

if [[ -z "$far" ]]; then
  echo "check_connects: no non-loopback connect/send destinations (command rc=$rc)" >&2
  [[ $keep_trace == 1 ]] || rm -f "$trace"
  exit "$rc"
fi
{
  echo "check_connects: NON-LOOPBACK destinations (count  syscall address port  program):"
  echo "$far"
  echo "check_connects: full trace in $trace (command rc=$rc)"
} >&2
if [[ $report_only == 1 ]]; then
  exit "$rc"
fi
exit 3
