#!/usr/bin/env bash
# Searches and suites across workers on one PostgreSQL (docs/scaling.md): a 24-trial search and a 24-run
# suite of cheap runs with 1, 2 and 4 workers against a throwaway local server, and the search on SQLite.
# Threads are split so that the workers do not oversubscribe the cores (cores / workers each, at least 1).
# Prints wall seconds, the storage's own time per trial or run (the search's "Search overhead per trial",
# the workers' "Queue overhead per run"), and the speed-up over one worker.
# Goals: the database adds < 1% per trial; 2 workers with one core each take < 0.6x one worker's time.
#
# THREADS=N gives every worker N threads instead: THREADS=1 compares one one-core worker with two, the goal's
# terms (with the default split, one worker already uses every core).
#
#   [THREADS=N] bash bench/scaling.sh [TRIALS] [WORKERS...]       defaults: 24 1 2 4
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-24}
shift || true
counts=("${@:-1 2 4}")
read -ra counts <<< "${counts[*]}"
xfer=$(realpath "${XFER_BIN:-build/xfer}")
cores=$(nproc)
tmp=$(mktemp -d)
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "scaling: PostgreSQL's server is not installed (scripts/setup.sh)" >&2; exit 1; }
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); chown postgres "$tmp"; chmod 755 "$tmp"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as[@]}" "$pgbin/initdb" -D "$tmp/pg" -U xfer -A trust -E UTF8 --locale=C > "$tmp/initdb.log"
"${as[@]}" "$pgbin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w \
  -o "-p $port -k $tmp -c listen_addresses=127.0.0.1" start > /dev/null
trap '"${as[@]}" "$pgbin/pg_ctl" -D "$tmp/pg" -m fast -w stop > /dev/null; rm -rf "$tmp"' EXIT
"$pgbin/createdb" -h 127.0.0.1 -p "$port" -U xfer xfer
url="postgresql://xfer@127.0.0.1:$port/xfer"

cheap=(--method scratch --target fmnist:classes=2,4,6,7,9:per_class=20:val=10 --backbone cnn4:width=8
       --iterations 150 --eval-every 50 --batch-size 32 --param lr=log:0.01:0.2 --param momentum=lin:0.5:0.95
       --trials "$trials" --startup-trials 4)
threads_for() {
  if [ -n "${THREADS:-}" ]; then echo "$THREADS"; return; fi
  local t=$((cores / $1)); ((t < 1)) && t=1; echo "$t"
}
seconds_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

echo "cores: $cores; $(uptime)"
echo
echo "Search: $trials trials (scratch, cnn4 width 8, 150 steps of 32 images)"
echo "| storage | workers | threads each | wall s | vs 1 worker | storage per trial | sampler per trial | of run time |"
echo "|:--|--:|--:|--:|--:|--:|--:|--:|"
for storage in sqlite postgresql; do
  base=""
  for w in "${counts[@]}"; do
    t=$(threads_for "$w")
    if [ "$storage" = sqlite ]; then where=(--storage "$tmp/s$w.sqlite"); else where=(--storage "$url" --study "s$w"); fi
    start=$(date +%s%N)
    "$xfer" -q search "${cheap[@]}" --workers "$w" --threads "$t" "${where[@]}" --out "$tmp/search-$storage-$w" \
      > "$tmp/search-$storage-$w.txt"
    secs=$(seconds_since "$start")
    [ -n "$base" ] || base=$secs
    # "Search overhead per trial: sampler A ms + storage B ms = C% of a trial's run time (...)"
    line=$(grep -o 'Search overhead per trial.*' "$tmp/search-$storage-$w.txt")
    sampler=$(sed -E 's/.*sampler ([0-9.]+) ms.*/\1/' <<< "$line")
    store=$(sed -E 's/.*storage ([0-9.]+) ms.*/\1/' <<< "$line")
    share=$(sed -E 's/.*= ([0-9.]+%).*/\1/' <<< "$line")
    awk -v s="$storage" -v w="$w" -v t="$t" -v x="$secs" -v b="$base" -v st="$store" -v sa="$sampler" -v sh="$share" \
      'BEGIN { printf "| %s | %d | %d | %.1f | %.2fx | %s ms | %s ms | %s |\n", s, w, t, x, x / b, st, sa, sh }'
  done
done

# The suite: one cheap task, scratch, $trials seeds: $trials runs, each its own process.
cat > "$tmp/scaling.json" << JSON
{
  "description": "$trials cheap runs for bench/scaling.sh",
  "run": {"iterations": 150, "eval_every": 50, "batch_size": 32, "lr": 0.05},
  "seeds": $trials,
  "tasks": [{"name": "cheap", "target": "fmnist:classes=2,4,6,7,9:per_class=20:val=10"}],
  "methods": ["scratch"],
  "timing": false
}
JSON
echo
echo "Suite: $trials runs (scratch, cnn4, 150 steps of 32 images), each its own process"
echo "| how | workers | threads each | wall s | vs 1 worker | queue per run |"
echo "|:--|--:|--:|--:|--:|--:|"
start=$(date +%s%N)
"$xfer" -q bench --suite "$tmp/scaling.json" --jobs 1 --threads "$cores" --out "$tmp/local" > "$tmp/local.txt"
echo "| xfer bench (local, no queue) | 1 | $cores | $(seconds_since "$start") | | |"
base=""
for w in "${counts[@]}"; do
  t=$(threads_for "$w")
  q=$url
  cp "$tmp/scaling.json" "$tmp/scaling$w.json"  # suite scalingW: a queue of its own for each count
  "$xfer" -q bench --suite "$tmp/scaling$w.json" --storage "$q" --out "$tmp/q$w" > /dev/null
  start=$(date +%s%N)
  pids=()
  for ((i = 0; i < w; i++)); do
    "$xfer" -q worker --queue "$tmp/scaling$w.json" --storage "$q" --threads "$t" --out "$tmp/q$w-$i" \
      > "$tmp/worker$w-$i.txt" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  secs=$(seconds_since "$start")
  [ -n "$base" ] || base=$secs
  per_run=$(grep -ho 'Queue overhead per run: [0-9.]*' "$tmp"/worker"$w"-*.txt | awk '{ s += $NF; n++ } END { printf "%.2f", s / n }')
  "$xfer" -q bench --suite "$tmp/scaling$w.json" --storage "$q" --out "$tmp/q$w" --collect > /dev/null
  awk -v w="$w" -v t="$t" -v x="$secs" -v b="$base" -v o="$per_run" \
    'BEGIN { printf "| xfer worker (PostgreSQL) | %d | %d | %.1f | %.2fx | %s ms |\n", w, t, x, x / b, o }'
done
echo
echo "$(uptime)"
