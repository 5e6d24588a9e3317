#!/usr/bin/env bash
# Learning on real pixels (issue 18, item 5): tiny, resnet18-fcn and
# unet-resnet18, from
# scratch with the default augmentation, trained on the left halves of the
# real samples in ../shared/data/real/ (LoveDA, the ISPRS Potsdam and
# Vaihingen crops) and scored on the right halves, against the majority
# class of the training halves. Prints a markdown table (the one in
# benches/RESULTS.md). RSTILE_REAL_EPOCHS sets the epochs (default 12).
#
#   bash benches/real_pixels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test learning_real real_pixels_table -- --ignored --nocapture 2>&1 \
    | grep -E '^\||^SKIP|majority class|last epoch IoU|panicked'
