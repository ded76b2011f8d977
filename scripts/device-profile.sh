#!/usr/bin/env bash
# Per-kernel counters of `cfg bench`'s paths on a GPU machine, read with
# Nsight Compute (it needs a runtime that exposes the counters): per launch,
# the kernel, its grid and block, registers per thread, duration, DRAM
# throughput and SM throughput as a share of peak, and achieved occupancy.
# For finding why a kernel is far from copy bandwidth. Writes $OUT/ncu.csv
# (or target/device-out) and prints a table. Build the bundle first:
# scripts/device-bundle.sh.
#
#   bash scripts/device-profile.sh [BUNDLE [SIZES [KERNELS]]]
#
# SIZES: cfg bench's --sizes (default 262144,33554432); KERNELS: a regex of
# kernel names (default: the combine, renorm and rescale kernels).
set -uo pipefail
bundle="${1:-target/device}"
sizes="${2:-262144,33554432}"
kernels="${3:-combine|renorm|group_|seg_dots|finalize|scale_groups}"
out="${OUT:-target/device-out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
source "$(dirname "${BASH_SOURCE[0]}")/device-env.sh"
metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size,launch__block_size
# Two timed repetitions per path keep the launches few; the clocks stay as found.
timeout 200 ncu --clock-control none --csv --page raw --metrics "$metrics" \
    --kernel-name "regex:$kernels" \
    "$bundle/cfg" bench --device cuda --reps 2 --sizes "$sizes" >"$out/ncu.csv" 2>"$out/ncu-stderr.txt"
rc=$?
tail -n 5 "$out/ncu-stderr.txt"
"$python" - "$out/ncu.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
if not rows:
    raise SystemExit("ncu wrote no rows")
head, units, data = rows[0], rows[1], rows[2:]
col = {name: i for i, name in enumerate(head)}
want = [("Kernel Name", "kernel"), ("launch__grid_size", "grid"), ("launch__block_size", "block"),
        ("launch__registers_per_thread", "regs"), ("gpu__time_duration.sum", "time"),
        ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram%"),
        ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm%"),
        ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy%")]
print(" ".join(f"{label:>12}" if i else f"{label:<34}" for i, (_, label) in enumerate(want)),
      f"(time in {units[col['gpu__time_duration.sum']]})")
for r in data:
    print(" ".join(f"{r[col[k]][:12]:>12}" if i else f"{r[col[k]][:34]:<34}" for i, (k, _) in enumerate(want)))
PY
exit "$rc"
