#!/bin/bash
# Optional: MariaDB + slurmdbd so that sacct works. Run after start-slurm.sh.
# Copied unchanged from the verified recipe in ../shared/slurm/ (see README.md here).
set -euo pipefail
T0=$SECONDS
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
pgrep -x mariadbd >/dev/null || /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.log 2>&1 &
until mariadb -e 'select 1' >/dev/null 2>&1; do sleep 0.3; (( SECONDS - T0 < 60 )) || { echo "mariadb did not start" >&2; exit 1; }; done
echo "mariadb up after $((SECONDS - T0))s"
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf
[ -e /run/slurmdbd.pid ] && [ -e /proc/$(cat /run/slurmdbd.pid) ] || /usr/sbin/slurmdbd
# point the clients and slurmctld at slurmdbd (slurmctld needs a restart, not just reconfigure)
sed -i '/^AccountingStorageTRES=/d' /etc/slurm/slurm.conf; sed -i 's|^AccountingStorageType=.*|AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageTRES=gres/gpu|' /etc/slurm/slurm.conf
until timeout 3 sacctmgr -n show cluster >/dev/null 2>&1; do sleep 0.5; (( SECONDS - T0 < 90 )) || { echo "slurmdbd did not start" >&2; tail /var/log/slurm/slurmdbd.log >&2; exit 1; }; done
echo "slurmdbd up after $((SECONDS - T0))s"
sacctmgr -i add cluster ci >/dev/null 2>&1 || true
p=$(cat /run/slurm/slurmctld.pid); kill "$p"; while grep -qs "^State:[[:space:]]*[RSD]" /proc/$p/status; do sleep 0.2; done
/usr/sbin/slurmctld
until timeout 3 sinfo -h -o '%T' 2>/dev/null | grep -qx idle; do sleep 0.5; (( SECONDS - T0 < 120 )) || { echo "slurmctld did not come back" >&2; exit 1; }; done
echo "slurmctld with accounting up after $((SECONDS - T0))s"
