#!/bin/bash
# Build benchmark (root; needs busybox-static, buildah optional): one Dockerfile (a COPY of
# FILES small source files and two RUN steps on a busybox base) built cold (empty cache) and
# warm (nothing changed) by berth, and by `buildah bud --layers` when buildah is installed.
# Median of RUNS each. The base image is made here from Debian's busybox-static (offline).
#
# Usage: cargo build --release && bench/build.sh      # FILES=200 RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
BERTH=${BERTH:-$PWD/target/release/berth}
FILES=${FILES:-200}; RUNS=${RUNS:-5}
WORK=$(mktemp -d /tmp/berth-build.XXXXXX)
cleanup() {
  if command -v buildah >/dev/null; then
    buildah rmi -f localhost/bench-build:1 localhost/bench-bb:1 >/dev/null 2>&1 || true
    buildah rm -a >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { local a=${1/./} b=${2/./}; echo $(( (10#$b - 10#$a) / 1000 )); }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

# The base image: a docker-save tarball of busybox-static and its applet links.
python3 bench/busybox_image.py "$WORK/bb.tar" localhost/bench-bb:1

# The context: FILES source files and a Dockerfile.
CTX=$WORK/ctx; mkdir -p "$CTX/src"
for i in $(seq "$FILES"); do printf 'line %s\n%.0s' "$i" $(seq 20) > "$CTX/src/f$i.txt"; done
cat > "$CTX/Dockerfile" <<'DF'
FROM localhost/bench-bb:1
COPY src/ /src/
RUN cat /src/* | wc -l > /lines
RUN echo built > /done
CMD ["cat", "/lines"]
DF
printf 'name: benchbuild\nservices:\n  app:\n    build: .\n    network_mode: none\n' > "$CTX/berth.yaml"

echo "# berth: cold (fresh state root) and warm (nothing changed), $FILES files, median of $RUNS"
cold=(); warm=()
for r in $(seq "$RUNS"); do
  root=$WORK/root$r
  BERTH_ROOT=$root "$BERTH" image import "$WORK/bb.tar" >/dev/null
  t0=$EPOCHREALTIME; (cd "$CTX" && BERTH_ROOT=$root "$BERTH" build -q >/dev/null); t1=$EPOCHREALTIME
  cold+=("$(ms "$t0" "$t1")")
  t0=$EPOCHREALTIME; (cd "$CTX" && BERTH_ROOT=$root "$BERTH" build -q >/dev/null); t1=$EPOCHREALTIME
  warm+=("$(ms "$t0" "$t1")")
  rm -rf "$root"
done
echo "berth cold: $(printf '%s\n' "${cold[@]}" | median) ms   (${cold[*]})"
echo "berth warm: $(printf '%s\n' "${warm[@]}" | median) ms   (${warm[*]})"

if command -v buildah >/dev/null; then
  # buildah's containers.conf asks for rlimits this host cannot grant; peer-bench's copy fixes it.
  # shellcheck source=/dev/null
  . /work/shared/peer-bench/common.sh
  # crun refuses a hybrid host whose cgroup2 holds a controller (see common.sh).
  hugetlb_v1_on
  trap 'cleanup; hugetlb_v1_off' EXIT
  buildah pull -q "docker-archive:$WORK/bb.tar" >/dev/null
  bcold=(); bwarm=()
  for r in $(seq "$RUNS"); do
    buildah rmi -f localhost/bench-build:1 >/dev/null 2>&1 || true
    buildah rmi --prune >/dev/null 2>&1 || true
    t0=$EPOCHREALTIME; buildah bud -q --layers --network none -t localhost/bench-build:1 "$CTX" >/dev/null; t1=$EPOCHREALTIME
    bcold+=("$(ms "$t0" "$t1")")
    t0=$EPOCHREALTIME; buildah bud -q --layers --network none -t localhost/bench-build:1 "$CTX" >/dev/null; t1=$EPOCHREALTIME
    bwarm+=("$(ms "$t0" "$t1")")
  done
  echo "buildah cold: $(printf '%s\n' "${bcold[@]}" | median) ms   (${bcold[*]})"
  echo "buildah warm: $(printf '%s\n' "${bwarm[@]}" | median) ms   (${bwarm[*]})"
else
  echo "buildah: not installed (apt-get install buildah)"
fi
