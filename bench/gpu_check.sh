#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py has the details). On the device machine, from
# the project root, carrying .device/whl, .device/tok and .device/on_device.sh
# (bash ../shared/device/pack.sh makes them):
#     bash bench/gpu_check.sh                 # writes $OUT/gpu_check.json (or bench/out/gpu_check.json)
# Anywhere, on CPU with tiny shapes (CI runs this, so the script cannot fail for a silly reason):
#     bash bench/gpu_check.sh --dry-run
# Extra arguments go to bench/gpu_check.py. The whole run is capped at GPU_CHECK_TIMEOUT seconds
# (default 470: under the 8 minutes the issue allows, leaving a device session room to rerun).
set -euo pipefail
if [ -f .device/on_device.sh ]; then
  # shellcheck disable=SC1091
  . .device/on_device.sh
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
out=${OUT:-bench/out}
mkdir -p "$out"
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$python" bench/gpu_check.py --out "$out/gpu_check.json" "$@"
