#!/bin/bash
# Single-machine Slurm for tests and CI (Debian bookworm, root, no systemd): munge + slurmctld + N slurmd.
# Copied from the verified recipe in ../shared/slurm/ (see README.md here); changes: idempotent (a
# Slurm already up with the requested node count is left alone) and a clear error for non-root.
# NODES=1 (default): one node = this machine. NODES=2: two emulated nodes n1,n2 on 127.0.0.1
# (one slurmd each, half the CPUs each), for multi-node/srun tests. Each node gets fake GPUs
# (char devices aliasing /dev/null) so --gpus/--gres is scheduled and CUDA_VISIBLE_DEVICES set.
set -euo pipefail
NODES=${NODES:-1}
T0=$SECONDS
[ "$(id -u)" = 0 ] || { echo "start-slurm.sh: must run as root (it installs packages and starts daemons)" >&2; exit 1; }
# Already up? Count the nodes that respond (idle, mixed or allocated). A controller that answers
# with another node count was configured by someone else: refuse rather than reconfigure it.
if command -v scontrol >/dev/null && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  up=$(timeout 5 sinfo -h -t idle,mixed,allocated,completing -o '%D' 2>/dev/null | awk '{s+=$1} END{print s+0}')
  if [ "$up" = "$NODES" ]; then echo "slurm already up: $up node(s)"; exit 0; fi
  echo "start-slurm.sh: a Slurm controller is already up with $up responsive node(s), not NODES=$NODES;" \
       "stop it first with scripts/slurm/stop-slurm.sh" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
command -v slurmctld >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
echo "[$((SECONDS-T0))s] packages present"
H=$(hostname -s)
read -r CPUS MEM < <(slurmd -C | awk -F'[ =]' '/^NodeName/{for(i=1;i<=NF;i++){if($i=="CPUs")c=$(i+1);if($i=="RealMemory")m=$(i+1)}; print c, m}')
mkdir -p /var/spool/slurmctld /var/log/slurm /run/munge /run/slurm /tmp/fakegpu
rm -f /tmp/fakegpu/gpu*; mknod /tmp/fakegpu/gpu0 c 1 3; mknod /tmp/fakegpu/gpu1 c 1 3
chown munge:munge /run/munge
if [ "$NODES" = 1 ]; then
  NODELINE="NodeName=$H CPUs=$CPUS RealMemory=$((MEM - 1024)) Gres=gpu:2 State=UNKNOWN"
  GRES="NodeName=$H Name=gpu File=/tmp/fakegpu/gpu[0-1]"; NAMES=($H)
else
  NODELINE="NodeName=n[1-2] NodeHostname=$H NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$((CPUS / 2)) RealMemory=$(((MEM - 1024) / 2)) Gres=gpu:1 State=UNKNOWN"
  GRES=$'NodeName=n1 Name=gpu File=/tmp/fakegpu/gpu0\nNodeName=n2 Name=gpu File=/tmp/fakegpu/gpu1'; NAMES=(n1 n2)
fi
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=$H
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=3600
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
AccountingStorageType=accounting_storage/none
GresTypes=gpu
$NODELINE
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
printf '%s\n' "$GRES" > /etc/slurm/gres.conf
for n in "${NAMES[@]}"; do mkdir -p /var/spool/slurmd-$n; done
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
/usr/sbin/slurmctld
if [ "$NODES" = 1 ]; then /usr/sbin/slurmd; else for n in "${NAMES[@]}"; do /usr/sbin/slurmd -N "$n"; done; fi
deadline=$((SECONDS + 30))
until [ "$(timeout 3 sinfo -h -t idle -o '%D' 2>/dev/null | awk '{s+=$1} END{print s+0}')" = "$NODES" ]; do
  (( SECONDS < deadline )) || { echo "slurm did not come up" >&2; tail -5 /var/log/slurm/*.log >&2; exit 1; }
  sleep 0.5
done
sinfo
echo "[$((SECONDS-T0))s] $NODES node(s) idle"
