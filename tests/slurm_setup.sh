#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs to run a real Slurm on this host: Debian's Slurm 22.05 and munge, a munge
# key, and the simulated nodes' names in /etc/hosts. Idempotent: a second run changes nothing. Needs root; .ci/test
# calls it before pytest. The daemons themselves are started (and stopped) by the tests.
set -euo pipefail

if [ "$(id -u)" != "0" ]; then
    echo "slurm_setup.sh: needs root (apt-get, /etc/hosts); the Slurm tests will be skipped." >&2
    exit 0
fi

packages=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' postinst scripts try to start services; there is no systemd here, which they tolerate.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The munge package creates a key on install; make one if an image shipped without it.
if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi

# The simulated nodes n1 and n2 run on this host; Lightning resolves the first node's name as the rendezvous address.
for node in n1 n2; do
    grep -Eq "^127\.0\.0\.1([[:space:]].*)?[[:space:]]${node}([[:space:]]|$)" /etc/hosts || echo "127.0.0.1 ${node}" >>/etc/hosts
done

echo "slurm_setup.sh: $(slurmctld -V), munge $(munged -V 2>&1 | awk '{print $1}' | sed 's/munge-//'), nodes n1 n2 in /etc/hosts"
