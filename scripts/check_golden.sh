#!/usr/bin/env bash
# Re-runs every golden-value script in tests/golden/ (Debian's python3-torch, one thread) on a copy of the
# folder and fails if any JSON it writes differs from the checked-in one: golden values must be what their
# script computes, and the scripts deterministic. A script writes its JSON beside itself.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r tests/golden "$work/golden"
rm -f "$work"/golden/*.json  # each must be written again
status=0
shopt -s nullglob
scripts=(tests/golden/make_*.py)
((${#scripts[@]})) || { echo "check_golden: no scripts in tests/golden" >&2; exit 1; }
for script in "${scripts[@]}"; do
  name=$(basename "$script")
  if ! OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PYTHONHASHSEED=0 "$python" "$work/golden/$name" >"$work/$name.log" 2>&1; then
    echo "check_golden: $name failed:" >&2; cat "$work/$name.log" >&2; status=1
  fi
done
# Every JSON checked in or written: one no script writes any more is stale, one not checked in is missing.
for name in $( (cd tests/golden && ls *.json; cd "$work/golden" && ls *.json) | sort -u); do
  if [ ! -f "tests/golden/$name" ]; then
    echo "check_golden: a script writes $name, which is not checked in" >&2; status=1
  elif [ ! -f "$work/golden/$name" ]; then
    echo "check_golden: no script in tests/golden writes $name" >&2; status=1
  elif ! cmp -s "tests/golden/$name" "$work/golden/$name"; then
    echo "check_golden: tests/golden/$name differs from what its script computes now:" >&2
    diff <(tr ',' '\n' <"tests/golden/$name") <(tr ',' '\n' <"$work/golden/$name") | head -20 >&2 || true
    status=1
  fi
done
[ "$status" = 0 ] && echo "check_golden: ${#scripts[@]} scripts reproduce their JSON"
exit "$status"
