#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` tests (make test-slurm).
#   scripts/local_slurm.sh start    install (Debian's slurm-wlm and munge) if needed, start munged,
#                                   slurmctld and slurmd; quick and harmless when already up
#   scripts/local_slurm.sh status   exit 0 and print `sinfo` when the cluster answers
#   scripts/local_slurm.sh stop     stop the three daemons this script started
# Needs root and apt-get (a Debian/Ubuntu machine); the config is written to /etc/slurm/slurm.conf
# only when none is there. Every failure ends with one line on stderr and exit 1.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/lib/slurm-local  # state, spool, logs and pid files: one dir to look in
die() { echo "local_slurm: $*" >&2; exit 1; }

up() { timeout 5 sinfo -h -o "%t" 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge yourself"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } ||
    die "apt-get install slurm-wlm munge failed"
}

write_conf() {
  [ -f "$CONF" ] && return
  local node; node=$(slurmd -C | head -1)  # this machine as slurmd sees it: NodeName=... CPUs=... RealMemory=...
  mkdir -p /etc/slurm
  cat > "$CONF" <<EOF
# Written by scripts/local_slurm.sh: one node, this machine, for tests.
ClusterName=local
SlurmctldHost=$(hostname)
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
KillWait=2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
$node
PartitionName=local Nodes=$(hostname) Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  up && { sinfo; return; }
  [ "$(id -u)" = 0 ] || die "not root: cannot install or start munged, slurmctld and slurmd"
  install
  write_conf
  mkdir -p "$STATE/state" "$STATE/spool" /run/munge
  chown munge:munge /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  fi
  pgrep -F "$STATE/slurmctld.pid" >/dev/null 2>&1 || slurmctld || die "slurmctld did not start (see $STATE/slurmctld.log)"
  pgrep -F "$STATE/slurmd.pid" >/dev/null 2>&1 || slurmd || die "slurmd did not start (see $STATE/slurmd.log)"
  for _ in $(seq 30); do
    up && { sinfo; return; }
    sleep 1
  done
  die "the node is not idle after 30 s: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -1)"
}

stop() {
  local f
  for f in slurmd slurmctld; do
    [ -f "$STATE/$f.pid" ] && kill "$(cat "$STATE/$f.pid")" 2>/dev/null || true
  done
  [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  echo "local_slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) up && sinfo || { echo "local_slurm: not running" >&2; exit 1; } ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
