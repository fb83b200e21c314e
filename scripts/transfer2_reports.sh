#!/bin/bash
# The second Atari transfer study's reports (issue 27; docs/RESULTS.md, "The second transfer study"), rebuilt
# from its run directories: every file under docs/atari_transfer2/{select,study} comes from here.
#   scripts/transfer2_reports.sh RUNS [STAGE...]     RUNS: the study's runs root (runs/s2 here)
# STAGE: select_leap, select_reptile (the outer step's choice on the validation game: report + per-meta-step
# scalars as CSV), study (every arm on the test games against the random encoder and the fixed template, on the
# primary metric and on the secondary one). Default: every stage whose runs exist.
set -euo pipefail
S=${1:?usage: scripts/transfer2_reports.sh RUNS [STAGE...]}; shift
METARL=${METARL:-metarl}
D=docs/atari_transfer2
TAGS="meta/step_over_visit meta/visit_displacement meta/init_displacement meta/grad_norm losses/train_auc"

select_method() {   # select_method NAME: both step fractions on Phoenix, the 0.25 run as the reference
  local runs=("$S/select/$1_f0.25" "$S/select/$1_f1")
  $METARL report "${runs[@]}" --metric human_normalised_auc --baseline "atari_transfer2_$1_f0.25" \
    --out "$D/select/$1"
  for tag in $TAGS; do
    $METARL plot "${runs[@]}" --tag "$tag" --out "/tmp/transfer2_$1.png" --csv "$D/select/$1/${tag//\//_}.csv"
  done
}

study() {   # the arms: controls (random encoder + same-game encoder), Leap, Reptile (val-chosen), template, pretrained
  local leap reptile
  leap=$(cat "$S/choice_leap"); reptile=$(cat "$S/choice_reptile")
  local runs=("$S"/control/* "$leap" "$reptile" "$S/study/template" "$S/study/pretrained")
  $METARL report "${runs[@]}" --metric human_normalised_auc --baseline random_init \
    --baseline atari_transfer2_template --out "$D/study"
  $METARL report "${runs[@]}" --baseline random_init --baseline atari_transfer2_template --out "$D/study/secondary"
}

stages=("$@")
if [ ${#stages[@]} -eq 0 ]; then
  for m in leap reptile; do [ -e "$S/select/${m}_f1/eval_atari.json" ] && stages+=("select_$m"); done
  [ -e "$S/study/pretrained/eval_atari.json" ] && stages+=(study)
fi
for stage in "${stages[@]}"; do
  case $stage in
    select_leap) select_method leap ;;
    select_reptile) select_method reptile ;;
    study) study ;;
    *) echo "unknown stage $stage (select_leap, select_reptile, study)" >&2; exit 2 ;;
  esac
done
