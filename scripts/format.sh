#!/usr/bin/env bash
# Formats every C++ file with the repository's .clang-format (clang-format 14, Debian's), or with --check
# lists the files that would change and fails; CI runs the check.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format: clang-format is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
mapfile -t files < <(git ls-files -- 'include/*.h' 'src/*.cpp' 'apps/*.h' 'apps/*.cpp' 'tests/*.h' 'tests/*.cpp' \
                                     'bench/*.h' 'bench/*.cpp')
if [ "${1:-}" = "--check" ]; then
  bad=()
  for f in "${files[@]}"; do
    clang-format --style=file "$f" | cmp -s - "$f" || bad+=("$f")
  done
  if ((${#bad[@]})); then
    printf 'format: %s\n' "${bad[@]}" >&2
    echo "format: ${#bad[@]} of ${#files[@]} files differ from .clang-format; run bash scripts/format.sh" >&2
    exit 1
  fi
  echo "format: all ${#files[@]} files follow .clang-format"
else
  clang-format --style=file -i "${files[@]}"
fi
