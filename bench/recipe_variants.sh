#!/usr/bin/env bash
# MIRO's self-conditioning and synthetic-caption mixing on the embedded default (docs/demo.md, section
# "Self-conditioning and synthetic captions, measured"): the demo's data with a second caption family
# (miro-data shapes --synthetic-captions), then per variant and seed a 3000-step demo training, the
# shape probe and miro-eval's alignment benchmark at alignment targets 10 and 0 (the other targets at 10;
# the same prompts and noise for every run, so runs and targets compare paired).
#
#   bench/recipe_variants.sh [OUT [VARIANTS [SEEDS]]]      e.g. bench/recipe_variants.sh runs/recipe "a c b" "0 1"
#
# Variants: a = the demo as it is; b = self-conditioning as the cc12m recipe (model.self_conditioning,
# module.self_cond_rate 0.9); c = half the drawn samples use their synthetic caption. Each finished step
# leaves its output behind and is skipped on a rerun. THREADS (default 1) and NICE (default 5) set the
# CPU share; CPUS (e.g. 0) pins with taskset. bench/recipe_variants_table.py writes the table.
set -euo pipefail
OUT=${1:-runs/recipe}
VARIANTS=${2:-a c b}
SEEDS=${3:-0 1}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1}
NICE=${NICE:-5}
STEPS=${STEPS:-3000}
EVAL_SEEDS=${EVAL_SEEDS:-0}   # miro-eval seeds (prompts and noise); seed 0 -> OUT/<run>/eval, N -> eval-seedN
RUN=(env OMP_NUM_THREADS="$THREADS" nice -n "$NICE")
if [ -n "${CPUS:-}" ]; then RUN+=(taskset -c "$CPUS"); fi
BIN=$(dirname "$PY")

for v in $VARIANTS; do
    case $v in a|b|c) ;; *) echo "recipe_variants.sh: error: unknown variant $v (a, b or c)" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
"${RUN[@]}" "$BIN/miro-data" shapes --out "$OUT/shards" --n 20000 --size 24 --max-objects 2 \
    --object-size 0.3 0.5 --seed 0 --workers 1 --synthetic-captions
if [ ! -f "$OUT/bins.json" ]; then  # both stages resume by themselves too
    "${RUN[@]}" "$PY" -m data_prep.score_shards input="$OUT/shards" output="$OUT/scored" rewards=offline
    "${RUN[@]}" "$PY" -m data_prep.fit_bins input="$OUT/scored" out="$OUT/bins.json" n_bins=16
fi

for seed in $SEEDS; do
    for v in $VARIANTS; do
        case $v in
            a) extra=() ;;
            b) extra=(++model.self_conditioning=true module.self_cond_rate=0.9) ;;
            c) extra=(data.synthetic_caption_prob=0.5) ;;
        esac
        dir="$OUT/$v-seed$seed"
        if [ ! -f "$dir/export/config.json" ] || [ ! -f "$dir/train_seconds" ]; then
            start=$(date +%s)
            "${RUN[@]}" "$PY" -m miro.train +experiment=shapes paths.data_dir="$OUT" paths.output_dir="$dir" \
                data.image_size=24 trainer.max_steps="$STEPS" seed="$seed" threads="$THREADS" "${extra[@]}"
            echo $(( $(date +%s) - start )) > "$dir/train_seconds"
        fi
        test -f "$dir/probe.json" || \
            "${RUN[@]}" "$PY" -m miro.shapes.probe --checkpoint "$dir/export" --out "$dir/probe.json"
        for es in $EVAL_SEEDS; do
            ev="$dir/eval"; if [ "$es" != 0 ]; then ev="$dir/eval-seed$es"; fi
            test -f "$ev/results.json" || \
                "${RUN[@]}" "$BIN/miro-eval" --checkpoint "$dir/export" --out "$ev" --threads "$THREADS" \
                    --benchmark shapes --rewards alignment --sweep-levels 0,10 --best-of 0 --seed "$es"
        done
        echo "recipe_variants.sh: $v seed $seed done: $dir"
    done
done
echo "recipe_variants.sh: all done under $OUT; table: $PY bench/recipe_variants_table.py $OUT"
