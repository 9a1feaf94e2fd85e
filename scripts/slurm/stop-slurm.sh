#!/bin/bash
# Stop what start-slurm.sh / start-slurmdbd.sh started, by pid file (never by name).
# Copied from the verified recipe in ../shared/slurm/ (see README.md here).
for f in /run/slurm/slurmctld.pid /run/slurm/slurmd-*.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null && echo "stopped $(basename "$f" .pid)"
done
# daemons double-fork; under a PID 1 that does not reap they linger as zombies, so wait on state, not on /proc/PID
sleep 2
