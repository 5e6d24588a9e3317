#!/usr/bin/env bash
# Starts a one-host Slurm cluster (Debian 12's slurm-wlm and munge) without
# systemd: munged, slurmctld and slurmd are started directly, each with its pid
# file in STATE_DIR, which also holds slurm.conf, the munge key, the spool and
# state directories and the logs. Clients find the cluster through SLURM_CONF:
#
#   bash scripts/slurm-up.sh /tmp/slurm           # waits until the node is idle
#   export SLURM_CONF=/tmp/slurm/slurm.conf
#   sbatch --wrap 'hostname'; squeue; sinfo
#   bash scripts/slurm-down.sh /tmp/slurm         # stops what slurm-up started
#
# The node line comes from `slurmd -C` (the machine's real CPUs and memory, so
# the node is not drained for low memory); the daemons talk over 127.0.0.1 (no
# DNS) on two free TCP ports picked at start, so several clusters (one per test
# run) can run side by side on one host. Prints `SLURM_CONF=...` on success.
#
# Environment: SLURM_UP_TIMEOUT (seconds to wait for the idle node, 60),
# SLURM_UP_CTLD_PORT / SLURM_UP_SLURMD_PORT (fixed ports instead of free ones).
set -euo pipefail

state=${1:-${TMPDIR:-/tmp}/rstile-slurm}
timeout=${SLURM_UP_TIMEOUT:-60}

for tool in munged slurmctld slurmd sinfo; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    echo "slurm-up: $tool not found; install slurm-wlm and munge (apt-get install slurm-wlm munge)" >&2
    exit 1
  fi
done
export PATH="$PATH:/usr/sbin:/sbin"

mkdir -p "$state"
state=$(cd "$state" && pwd -P)
chmod 700 "$state"
for pidf in munged.pid slurmctld.pid slurmd.pid; do
  if [ -s "$state/$pidf" ]; then
    pid=$(cat "$state/$pidf")
    if [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
      echo "slurm-up: $state already runs a daemon ($pidf: $pid); run scripts/slurm-down.sh $state first" >&2
      exit 1
    fi
    rm -f "$state/$pidf"
  fi
done
mkdir -p "$state/munge" "$state/ctld" "$state/spool" "$state/log"
chmod 700 "$state/munge"
# the munge socket path must fit in sun_path (108 bytes), and so must slurmd's
# step sockets under the spool directory
if [ ${#state} -gt 80 ]; then
  echo "slurm-up: $state is too long a path for the daemons' Unix sockets (max 80 characters)" >&2
  exit 1
fi

user=$(id -un)
# on any failure from here on, stop what was started
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
trap 'rc=$?; if [ $rc != 0 ]; then bash "$here/slurm-down.sh" "$state" >&2 || true; fi' EXIT

# --- munge -------------------------------------------------------------------
key="$state/munge/munge.key"
if [ ! -s "$key" ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$key" --force >/dev/null
  else
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
  fi
fi
chmod 600 "$key"
socket="$state/munge/munge.socket"
munged --force \
  --socket="$socket" \
  --key-file="$key" \
  --pid-file="$state/munged.pid" \
  --log-file="$state/log/munged.log" \
  --seed-file="$state/munge/munged.seed" 2>>"$state/log/munged.log"

# --- ports ---------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if port_free "$p" && [ "$p" != "${1:-}" ]; then
      echo "$p"
      return
    fi
  done
  echo "slurm-up: no free TCP port found" >&2
  exit 1
}
ctld_port=${SLURM_UP_CTLD_PORT:-$(pick_port)}
slurmd_port=${SLURM_UP_SLURMD_PORT:-$(pick_port "$ctld_port")}

# --- slurm.conf ----------------------------------------------------------------
host=$(hostname -s 2>/dev/null || hostname)
node=$(slurmd -C | head -n 1)
# keep NodeName CPUs Boards SocketsPerBoard CoresPerSocket ThreadsPerCore RealMemory
case "$node" in
  NodeName=*) ;;
  *)
    echo "slurm-up: unexpected output from slurmd -C: $node" >&2
    exit 1
    ;;
esac
nodename=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")
conf="$state/slurm.conf"
cat >"$conf" <<EOF
# One-host Slurm cluster written by rstile's scripts/slurm-up.sh
ClusterName=rstile
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/slurmd-%n
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$nodename Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$conf"
if [ "$user" != root ]; then
  # slurmd runs as the invoking user: it can only start that user's jobs
  sed -i "s/^SlurmdUser=root$/SlurmdUser=$user/" "$conf"
fi

# --- daemons -------------------------------------------------------------------
# slurmctld and slurmd daemonise themselves and write their pid files
wait_pidfile() {
  local f=$1 what=$2 i
  for i in $(seq 1 100); do
    [ -s "$f" ] && return 0
    sleep 0.1
  done
  echo "slurm-up: $what did not start; see $state/log/" >&2
  tail -n 20 "$state/log/$what"*.log >&2 2>/dev/null || true
  exit 1
}
wait_pidfile "$state/munged.pid" munged
slurmctld -f "$conf" -i >>"$state/log/slurmctld.out" 2>&1
wait_pidfile "$state/slurmctld.pid" slurmctld
slurmd -f "$conf" -N "$nodename" >>"$state/log/slurmd.out" 2>&1
wait_pidfile "$state/slurmd.pid" slurmd

# --- wait for an idle node -----------------------------------------------------
deadline=$((SECONDS + timeout))
st=""
while [ $SECONDS -lt $deadline ]; do
  st=$(sinfo -h -n "$nodename" -o %t 2>/dev/null | head -n 1 || true)
  case "$st" in
    idle) break ;;
    drain* | drng | down*)
      # a node drained by an earlier cluster of the same name: bring it back
      scontrol update NodeName="$nodename" State=RESUME >/dev/null 2>&1 || true
      ;;
  esac
  sleep 0.2
done
if [ "$st" != idle ]; then
  echo "slurm-up: node $nodename is '${st:-unknown}', not idle, after ${timeout} s; see $state/log/" >&2
  tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd-$nodename.log" >&2 2>/dev/null || true
  exit 1
fi
echo "SLURM_CONF=$conf"
