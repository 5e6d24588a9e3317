#!/usr/bin/env bash
# Stops the one-host Slurm cluster that scripts/slurm-up.sh started in
# STATE_DIR: slurmd, slurmctld, then munged, each by the pid in its pid file
# (never by name). SIGTERM first, SIGKILL after a grace period. A killed daemon
# whose parent does not reap it lingers as a zombie, so `kill -0` is no proof
# of life: a process counts as gone once /proc/PID is absent or its state
# (/proc/PID/stat, field 3) is Z. Job steps that slurmd started (slurmstepd
# and the job scripts under them) are stopped too, found through the parent
# links in /proc. Safe to run twice; exits non-zero only if a daemon survived.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 STATE_DIR" >&2
  exit 2
fi
state=$1
grace=${SLURM_DOWN_GRACE:-10}

alive() {
  local st
  st=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# the pid file's pid, if it still names the daemon it was written for
daemon_pid() {
  local f="$state/$1.pid" pid comm
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] || return 1
  alive "$pid" || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null)
  [ "$comm" = "$1" ] || return 1
  echo "$pid"
}

# every descendant of a pid (children first found through /proc/*/stat)
descendants() {
  local parent=$1 p ppid
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    ppid=$(sed -E 's/^[0-9]+ \(.*\) [A-Za-z] ([0-9]+).*/\1/' "/proc/$p/stat" 2>/dev/null) || continue
    if [ "$ppid" = "$parent" ]; then
      echo "$p"
      descendants "$p"
    fi
  done
}

stop() {
  local pids=("$@") p i left
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null
  for i in $(seq 1 $((grace * 10))); do
    left=0
    for p in "${pids[@]}"; do alive "$p" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
  for i in $(seq 1 50); do
    left=0
    for p in "${pids[@]}"; do alive "$p" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.1
  done
  return 1
}

failed=0
# slurmd's job steps run under slurmstepd, which slurmd forks and which
# survive slurmd: collect them before stopping slurmd
steps=()
if pid=$(daemon_pid slurmd); then
  mapfile -t steps < <(descendants "$pid")
fi
# slurmstepd re-parents to init when it daemonises: find those of this cluster
# by the SLURM_CONF they inherited from slurmd (slurm-up.sh exports it)
conf="SLURM_CONF=$(cd "$state" 2>/dev/null && pwd -P)/slurm.conf"
for p in /proc/[0-9]*; do
  p=${p#/proc/}
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = slurmstepd ] || continue
  if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qxF "$conf"; then
    steps+=("$p")
    mapfile -t -O ${#steps[@]} steps < <(descendants "$p")
  fi
done
# jobs first (slurmstepd shrugs off SIGTERM: a short grace, then SIGKILL),
# so that slurmd has nothing left to wait for
live=()
for p in "${steps[@]}"; do alive "$p" && live+=("$p"); done
grace=2 stop "${live[@]}" || { echo "slurm-down: job processes survived: ${live[*]}" >&2; failed=1; }
for name in slurmd slurmctld; do
  if pid=$(daemon_pid "$name"); then
    stop "$pid" || { echo "slurm-down: $name ($pid) survived SIGKILL" >&2; failed=1; }
  fi
done
if pid=$(daemon_pid munged); then
  stop "$pid" || { echo "slurm-down: munged ($pid) survived SIGKILL" >&2; failed=1; }
fi
if [ $failed = 0 ]; then
  rm -f "$state/munged.pid" "$state/slurmctld.pid" "$state/slurmd.pid"
fi
exit $failed
