#!/usr/bin/env bash
# Install the Debian packages the test suite needs, and nothing else:
#   slurm   : slurmctld slurmd slurm-client munge   (slurm_cluster fixture, scripts/slurm/)
#   net     : strace iproute2 util-linux            (check_connects.sh, netns_sandbox.sh)
#   browser : chromium                              (tests/analysis/test_analysis_report_browser.py;
#             the largest group by far, ~100 MB with its libraries)
#   data    : dataset-fashion-mnist                 (data.dataset fashion_mnist: the four idx files
#             in /usr/share/datasets/fashion-mnist, 30 MB; tests/test_fashion_mnist.py)
#
# Usage:  scripts/install_system_deps.sh [slurm|net|browser|data ...]   (no argument: all groups)
#
# Idempotent and quick when everything is present: one dpkg-query, no apt-get at all
# (about 0.05 s). Only when a package is missing does it run `apt-get update` and
# `apt-get install --no-install-recommends`, which needs root and network access, so run
# it BEFORE entering the network sandbox (scripts/netns_sandbox.sh).
set -euo pipefail

declare -A GROUPS_PKGS=(
  [slurm]="slurmctld slurmd slurm-client munge"
  [net]="strace iproute2 util-linux"
  [browser]="chromium"
  [data]="dataset-fashion-mnist"
)
groups=("$@")
[[ ${#groups[@]} -gt 0 ]] || groups=(slurm net browser data)

wanted=()
for g in "${groups[@]}"; do
  [[ -n "${GROUPS_PKGS[$g]:-}" ]] || { echo "install_system_deps: unknown group '$g' (known: ${!GROUPS_PKGS[*]})" >&2; exit 2; }
  read -r -a pkgs <<<"${GROUPS_PKGS[$g]}"
  wanted+=("${pkgs[@]}")
done

# dpkg-query prints "install ok installed" for each present package; anything else is missing.
missing=()
for p in "${wanted[@]}"; do
  st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_system_deps: all present (${wanted[*]})"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install_system_deps: missing ${missing[*]} and not root; install them with apt-get as root" >&2
  exit 1
fi

t0=$(date +%s)
# Keep apt from starting the packaged munge/slurm services. Without systemd nothing would
# start anyway, but on a host WITH systemd the packaged units would start a second munged/
# slurmctld with the Debian config. Only remove the guard if we created it.
created_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { if [[ $created_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Other users of the machine may hold the dpkg lock; wait for it instead of failing.
apt_opts=(-q -o DPkg::Lock::Timeout=300)
echo "install_system_deps: installing ${missing[*]}"
apt-get "${apt_opts[@]}" update >/dev/null
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
echo "install_system_deps: done in $(( $(date +%s) - t0 )) s"
