#!/usr/bin/env bash
# Mutation check: does the test suite notice a wrong formula? Applies each one-line mutation below, one at
# a time, to a copy of the tree (tracked and untracked files, in $MUTATE_DIR/src), rebuilds xfer_tests and
# the CLI there ($MUTATE_DIR/build, kept between runs so later runs are incremental), runs the tests that
# could catch it, and prints which mutants survive. Not part of CI: a first run builds from scratch
# (~10-20 min on 2 cores) and each mutant costs a rebuild (a few minutes) and its tests.
#
#   scripts/mutate.sh                 every mutant, each against its tests (the ctest -R filter below)
#   MUTATE_FULL=1 scripts/mutate.sh   every mutant against the whole suite (hours)
#   scripts/mutate.sh init-ignored    only the named mutants
#   MUTATE_DRY=1 scripts/mutate.sh    only check that every mutation still applies (no build)
#
# A mutation is FROM -> TO in FILE, literal text that must occur exactly once there (so it keeps applying
# while other lines change, and a mutant whose line was rewritten is reported, not skipped silently).
# The tests are run once without any mutation first; a test that fails there cannot kill anything.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${MUTATE_DIR:-/tmp/xfer-mutate}
jobs=$(nproc)
export OMP_WAIT_POLICY=PASSIVE

# name | file | from | to | ctest -R regex of the tests that could catch it
mutants=(
  # -- runs and resumption
  "init-ignored|src/xfer/workflows/run.cpp|if (r.pretrained) copy_state(*r.pretrained, *r.model, \"backbone.\");|if (false) copy_state(*r.pretrained, *r.model, \"backbone.\");|^(Init|Trainer)\\."
  "resume-forgets-method-rng|src/xfer/train/trainer.cpp|rng.set_state(ck.read_tensor(\"rng\").to(torch::kCPU));|ck.read_tensor(\"rng\");|(^Baselines\\.Resume|KillResume|^Trainer\\.Resume)"
  # -- baselines (this branch's step tests)
  "l2-no-weight-decay|src/xfer/methods/method.cpp|{\"heads\", model->head_parameters(), head_lr_mult, std::nullopt}};|{\"heads\", model->head_parameters(), head_lr_mult, 0.0}};|^Step\\."
  "l2sp-no-head-term|src/xfer/methods/regularization.cpp|return LossTerms{ce + sp + decay,|return LossTerms{ce + sp,|^(Step|Regularization|BaselinesGolden)\\."
  "l2sp-half-missing|src/xfer/methods/regularization.cpp|return sum * (0.5 * alpha);|return sum * alpha;|^(Step|Regularization|BaselinesGolden)\\."
  "bss-wrong-sign|src/xfer/methods/regularization.cpp|bss_penalty(all, opts_.k) * opts_.eta;|bss_penalty(all, opts_.k) * -opts_.eta;|^(Step|Regularization|BaselinesGolden)\\."
  "bss-largest-values|src/xfer/methods/regularization.cpp|return s.slice(0, r - k, r).pow(2).sum();|return s.slice(0, 0, k).pow(2).sum();|^(Step|Regularization|BaselinesGolden)\\."
  "rifle-bound-by-outputs|src/xfer/methods/regularization.cpp|std::sqrt(static_cast<double>(head->weight.size(1)));|std::sqrt(static_cast<double>(head->weight.size(0)));|^(Step|Regularization)\\."
  "mixup-unpermuted-labels|src/xfer/methods/mixup.cpp|const torch::Tensor l = mixed_cross_entropy(logits, b.y, p.y, d.lambda);|const torch::Tensor l = mixed_cross_entropy(logits, b.y, b.y, d.lambda);|^(Step|Mixup|BaselinesGolden)\\."
  "manifold-mixup-wrong-layer|src/xfer/methods/mixup.cpp|return stage == layer ? mix(out, partner_rows(out, b, d.perm), d.lambda) : out;|return stage != layer ? mix(out, partner_rows(out, b, d.perm), d.lambda) : out;|^(Step|Mixup)\\."
  "cutmix-lambda-uncorrected|src/xfer/methods/mixup.cpp|  d.lambda = cutmix_lambda(box, h, w);|  (void)cutmix_lambda(box, h, w);|^(Step|Mixup|BaselinesGolden)\\."
  "cotrain-aux-weight-ignored|src/xfer/methods/xmixup.cpp|const torch::Tensor total = ce_target + opts_.aux_weight * ce_aux;|const torch::Tensor total = ce_target + ce_aux;|^(Step|XMixup)\\."
  "datl-class-weights-ignored|src/xfer/methods/datl.cpp|return (w * ce).mean();|return ce.mean();|^(Step|Importance)\\."
  "ema-swapped-decay|src/xfer/models/teacher.cpp|p.value().mul_(decay).add_(*s, 1.0 - decay);|p.value().mul_(1.0 - decay).add_(*s, decay);|^(Teacher|Smile|Step)\\."
  # -- methods of the papers (their independent checks are fid1's and fid2's)
  "smooth-swapped-weights|src/xfer/methods/smooth.cpp|const torch::Tensor s = (1 - lambda) * ce_source;|const torch::Tensor s = lambda * ce_source;|^(Smooth|Step)"
  "xmixup-swapped-mix|src/xfer/methods/xmixup.cpp|m.x = mix(t.x, a.x, m.lambda);|m.x = mix(a.x, t.x, m.lambda);|^(XMixup|Step)"
  "delta-attention-ignored|src/xfer/methods/delta.cpp|const torch::Tensor term = (sq * attention[l].to(m.dtype()).view({1, c})).sum()|const torch::Tensor term = (sq / static_cast<double>(c)).sum()|^(Regularization|BaselinesGolden|Delta)"
  "smile-fc-weight-ignored|src/xfer/methods/smile.cpp|terms.total = terms.total + opts_.gamma_fc * fc;|terms.total = terms.total + fc;|^Smile"
  "gradmix-eta-unapplied|src/xfer/methods/gradmix.cpp|if (eta != 1.0) sum.mul_(eta);|if (false) sum.mul_(eta);|^(GradMix|MixingWeights)"
  "mixmatch-no-rampup|src/xfer/methods/gradmix.cpp|return o.mixmatch_weight * std::min(1.0, static_cast<double>(step) / ramp_steps);|return o.mixmatch_weight;|^(GradMix|Semi|MixMatch)"
  "label-il-on-softmax|src/xfer/metrics/analysis.cpp|return std::vector<torch::Tensor>{g, softmax ? torch::softmax(z, 1) : z};|return std::vector<torch::Tensor>{g, torch::softmax(z, 1)};|^Analysis\\."
  "gradmix-adalr-sign|src/xfer/source/mixing_weights.cpp|return 1.0 / (1.0 + std::exp(-(beta * rho - gamma)));|return 1.0 / (1.0 + std::exp(beta * rho - gamma));|^(GradMix|MixingWeights)"
  # -- data
  "rrc-width-height-swapped|src/xfer/data/image.cpp|const int64_t w = std::llround(std::sqrt(target * aspect));|const int64_t w = std::llround(std::sqrt(target / aspect));|^(CropGolden|ImageFolder|Image)"
  "crop-pixel-centres|src/xfer/data/image.cpp|double s = start + (static_cast<double>(i) + 0.5) * step - 0.5;|double s = start + static_cast<double>(i) * step;|^(CropGolden|ImageFolder|Image)"
  "beta-shapes-swapped|src/xfer/core/rng.cpp|std::gamma_distribution<double> ga(a, 1.0), gb(b, 1.0);|std::gamma_distribution<double> ga(b, 1.0), gb(a, 1.0);|^Rng\\."
  # -- metrics
  "confusion-transposed|src/xfer/metrics/accuracy.cpp|(target.to(torch::kCPU) * classes_ + predicted.to(torch::kCPU))|(predicted.to(torch::kCPU) * classes_ + target.to(torch::kCPU))|^(Accuracy|Trainer)\\."
  "mean-class-over-absent|src/xfer/metrics/accuracy.cpp|e.mean_class = present > 0 ? class_sum / static_cast<double>(present) : 0.0;|e.mean_class = present > 0 ? class_sum / static_cast<double>(classes_) : 0.0;|^Accuracy\\."
  # -- search
  "tpe-score-sign|src/xfer/search/tpe.cpp|const double score = l.log_pdf(c) - g.log_pdf(c);|const double score = g.log_pdf(c) - l.log_pdf(c);|^(Tpe|SearchCli|Search)"
  "study-never-retries|src/xfer/search/study.cpp|if (count.integer(0) >= retries) continue;|if (count.integer(0) >= 0) continue;|^(Study|SearchCli)"
)

only=("$@")
selected=()
for m in "${mutants[@]}"; do
  name=${m%%|*}
  if ((${#only[@]})); then
    for o in "${only[@]}"; do [ "$o" = "$name" ] && selected+=("$m"); done
  else
    selected+=("$m")
  fi
done
((${#selected[@]})) || { echo "mutate: no mutant named ${only[*]}" >&2; exit 2; }

# Replaces the one occurrence of FROM in FILE by TO; fails if FROM is not there exactly once.
mutate_file() {
  /usr/bin/python3 - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"{path}: {text.count(old)} occurrences of the line to mutate")
open(path, "w").write(text.replace(old, new))
EOF
}

if [ -n "${MUTATE_DRY:-}" ]; then
  bad=0
  for m in "${selected[@]}"; do
    IFS='|' read -r name file from to regex <<<"$m"
    scratch=$(mktemp)
    cp "$repo/$file" "$scratch"
    if mutate_file "$scratch" "$from" "$to"; then echo "  $name: applies"; else echo "  $name: NOT APPLIED"; bad=1; fi
    rm -f "$scratch"
  done
  exit "$bad"
fi

# The copy: tracked and untracked (not ignored) files; unchanged files keep their times, so a kept build
# directory rebuilds only what changed.
mkdir -p "$work/src"
(cd "$repo" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xpf - -C "$work/src"
[ -f "$work/build/CMakeCache.txt" ] ||
  cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DXFER_BUILD_BENCH=OFF >/dev/null
build() { cmake --build "$work/build" -j"$jobs" --target xfer_tests xfer_bin >"$work/build.log" 2>&1; }

# ctest -R REGEX; prints the names of the tests that failed (empty: none).
failing_tests() {
  (cd "$work/build" && ctest -j"$jobs" -R "$1" --timeout 900 >"$work/ctest.log" 2>&1) || true
  sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) (.*/\1/p' "$work/ctest.log" | sort -u
}

echo "mutate: building the unmutated copy in $work"
build || { echo "mutate: the unmutated tree does not build; see $work/build.log" >&2; exit 1; }
all_regex=$(for m in "${selected[@]}"; do IFS='|' read -r _ _ _ _ r <<<"$m"; echo "$r"; done | paste -sd'|')
[ -n "${MUTATE_FULL:-}" ] && all_regex=.
baseline=$(failing_tests "$all_regex")
if [ -n "$baseline" ]; then
  echo "mutate: these tests fail without any mutation and cannot kill a mutant:"; echo "$baseline" | sed 's/^/  /'
fi

report=()
survivors=0
for m in "${selected[@]}"; do
  IFS='|' read -r name file from to regex <<<"$m"
  [ -n "${MUTATE_FULL:-}" ] && regex=.
  target="$work/src/$file"
  cp -p "$target" "$work/original"
  if ! mutate_file "$target" "$from" "$to"; then
    report+=("$name: NOT APPLIED (its line is not in $file exactly once any more; update the list)")
    continue
  fi
  echo "mutate: $name ($file)"
  if ! build; then
    report+=("$name: killed by the compiler")
  else
    killed=$(comm -23 <(failing_tests "$regex") <(echo "$baseline" | sed '/^$/d' | sort -u))
    if [ -n "$killed" ]; then
      report+=("$name: killed by $(echo "$killed" | paste -sd' ')")
    else
      report+=("$name: SURVIVED (tests run: ctest -R '$regex')")
      survivors=$((survivors + 1))
    fi
  fi
  cp "$work/original" "$target"
  touch "$target"  # newer than the mutant's objects: the next build recompiles it
done
build || true

echo
echo "mutate: ${#selected[@]} mutants, $survivors survived"
printf '  %s\n' "${report[@]}"
