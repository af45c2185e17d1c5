#!/bin/bash
# Disk benchmark (root; needs e2fsprogs).
#
# 1. A private disk: `up -d` of one service with a SIZE private disk, the first time (the
#    sparse image, mkfs.ext4 and the loop device) and again after `down` (attach only),
#    beside the same service without a disk. Differences are the disk's cost.
# 2. N containers on one shared disk, against N containers each with a full copy of the same
#    baseline (N shared disks of the same seed, one per service): `up -d` time and the host
#    disk used by the baselines. The seed is SEED_MB MiB in 200 files.
#
# Usage: cargo build --release && bench/disk.sh      # SIZE=1g N=100 SEED_MB=20 RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
BERTH=${BERTH:-$PWD/target/release/berth}
SIZE=${SIZE:-1g}; N=${N:-100}; SEED_MB=${SEED_MB:-20}; RUNS=${RUNS:-5}
WORK=$(mktemp -d /tmp/berth-disk.XXXXXX)
export BERTH_ROOT=$WORK/state
cleanup() {
  for d in "$WORK"/*/; do [ -f "$d/compose.yml" ] && (cd "$d" && "$BERTH" down -v -t 0 --progress quiet >/dev/null 2>&1 || true); done
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { local a=${1/./} b=${2/./}; echo $(( (10#$b - 10#$a) / 1000 )); }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }
up() { local t0=$EPOCHREALTIME; (cd "$1" && "$BERTH" up -d --progress quiet); local t1=$EPOCHREALTIME; ms "$t0" "$t1"; }
down() { (cd "$1" && "$BERTH" down "${@:2}" -t 0 --progress quiet); }

# --- 1. private disk ---------------------------------------------------------------------
mkdir -p "$WORK/plain" "$WORK/priv"
printf 'name: bdplain\nservices:\n  db:\n    image: host\n    command: [sleep, "3600"]\n' > "$WORK/plain/compose.yml"
printf 'name: bdpriv\nservices:\n  db:\n    image: host\n    command: [sleep, "3600"]\n    disks: ["data:/data"]\ndisks:\n  data:\n    size: %s\n' "$SIZE" > "$WORK/priv/compose.yml"
plain=(); first=(); again=()
for r in $(seq "$RUNS"); do
  plain+=("$(up "$WORK/plain")"); down "$WORK/plain"
  first+=("$(up "$WORK/priv")"); down "$WORK/priv"
  again+=("$(up "$WORK/priv")"); down "$WORK/priv" -v
done
p=$(printf '%s\n' "${plain[@]}" | median); f=$(printf '%s\n' "${first[@]}" | median); a=$(printf '%s\n' "${again[@]}" | median)
echo "private disk of $SIZE (up -d of one service, median of $RUNS):"
printf '  %-40s %6s ms\n' "no disk" "$p" "first up: create + mkfs + attach" "$f" "next up: attach" "$a"
printf '  %-40s %6s ms\n' "create + attach, beyond no disk" "$((f - p))" "attach, beyond no disk" "$((a - p))"

# --- 2. shared disk vs full copies -------------------------------------------------------
seed=$WORK/seed; mkdir -p "$seed"
for i in $(seq 200); do head -c $((SEED_MB * 1024 * 1024 / 200)) /dev/urandom > "$seed/f$i"; done
mkdir -p "$WORK/shared" "$WORK/copies"
{ echo "name: bdshared"; echo services:
  for i in $(seq "$N"); do printf '  s%d:\n    image: host\n    command: [sleep, "3600"]\n    disks: ["base:/srv"]\n' "$i"; done
  printf 'disks:\n  base:\n    kind: shared\n    source: %s\n' "$seed"
} > "$WORK/shared/compose.yml"
{ echo "name: bdcopies"; echo services:
  for i in $(seq "$N"); do printf '  s%d:\n    image: host\n    command: [sleep, "3600"]\n    disks: ["base%d:/srv"]\n' "$i" "$i"; done
  echo disks:
  for i in $(seq "$N"); do printf '  base%d:\n    kind: shared\n    source: %s\n' "$i" "$seed"; done
} > "$WORK/copies/compose.yml"
t_shared=$(up "$WORK/shared"); kb_shared=$(du -sk "$BERTH_ROOT/disks" | cut -f1); down "$WORK/shared" -v
t_copies=$(up "$WORK/copies"); kb_copies=$(du -sk "$BERTH_ROOT/disks" | cut -f1); down "$WORK/copies" -v
echo "$N containers, a ${SEED_MB} MiB baseline (up -d, first time, one run):"
printf '  %-40s %8s ms %10s MiB on the host\n' "one shared disk" "$t_shared" "$((kb_shared / 1024))" \
  "a full copy each" "$t_copies" "$((kb_copies / 1024))"
