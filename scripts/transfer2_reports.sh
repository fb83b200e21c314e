#!/bin/bash
# The second Atari transfer study's evidence under docs/atari_transfer2/ (issue 27; docs/RESULTS.md, "The second
# transfer study"), from its run directories. Run from the repository root with the environment active.
#   scripts/transfer2_reports.sh select METHOD RUN_F0.25 RUN_F1
#       the outer step's choice on the validation game: the two runs' report on their val results (`--split val`)
#       and their per-meta-step scalars as CSV (step over visit, visit and θ⁰ displacement, meta-gradient norm,
#       training AUC) -> docs/atari_transfer2/select/METHOD/
#   scripts/transfer2_reports.sh study LEAP_RUN REPTILE_RUN TEMPLATE_RUN PRETRAINED_RUN CONTROL_RUN...
#       every arm on the test games against the random encoder (the controls' random arm) and the fixed template,
#       with the fraction of the gap to the same-game encoder (the controls) each closes; on the primary metric
#       and on the secondary one (the default metric), and on the related and the unrelated held-out games apart
#       -> docs/atari_transfer2/study/{,secondary,related,unrelated}; and Assault alone (assault/), the related
#       game whose positive control passed: NameThisGame's failed (added after the runs, said so in RESULTS)
set -euo pipefail
D=docs/atari_transfer2
case ${1:-} in
  select)
    [ $# -eq 4 ] || { echo "usage: $0 select METHOD RUN_F0.25 RUN_F1" >&2; exit 2; }
    out=$D/select/$2
    metarl report "$3" "$4" --split val --metric human_normalised_auc --baseline "atari_transfer2_$2_f0.25" \
      --out "$out"
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT          # the figures are not kept: the CSVs are
    for tag in meta/step_over_visit meta/visit_displacement meta/init_displacement meta/grad_norm losses/train_auc; do
      metarl plot "$3" "$4" --tag "$tag" --out "$tmp/plot.png" --csv "$out/${tag//\//_}.csv"
    done ;;
  study)
    [ $# -ge 6 ] || { echo "usage: $0 study LEAP REPTILE TEMPLATE PRETRAINED CONTROL..." >&2; exit 2; }
    shift
    runs=("$@")
    against() {    # every arm against the random encoder and the template; the gap to the same-game encoder
      metarl report "${runs[@]}" --baseline random_init --baseline atari_transfer2_template \
        --control atari_transfer2_control "$@"
    }
    against --metric human_normalised_auc --out $D/study
    against --out $D/study/secondary
    # the verdict per kind of held-out game: the two shooters (related to the family) and the brawler (not)
    against --metric human_normalised_auc --tasks Assault,NameThisGame --out $D/study/related
    against --metric human_normalised_auc --tasks KungFuMaster --out $D/study/unrelated
    against --metric human_normalised_auc --tasks Assault --out $D/study/assault ;;
  *) echo "usage: $0 select|study ..." >&2; exit 2 ;;
esac
