#!/usr/bin/env bash
# The prepared GPU check (`make gpu-check`): the `cuda` tests, then the main job's head fitted on the GPU and a
# small bench of ar, transformers' generate and speculative decoding on it, bfloat16 and float32.
# Writes into ${OUT:-gpu_check}/: pytest.log, fit.log, bench_<dtype>.json, summary.txt. Needs the venv
# (`make venv`) and one CUDA GPU; takes a few minutes. Usage: OUT=dir bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu_check}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TJDNET_EXPERIMENTS="$OUT/experiments"

"$BIN/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())" \
    | tee "$OUT/summary.txt"
"$BIN/pytest" -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log" | tail -3 | tee -a "$OUT/summary.txt"

"$BIN/tjdnet" fit --config configs/main_stemp.yaml --run_name gpu-check --test_after_fit false \
    --trainer.accelerator gpu --trainer.devices 1 > "$OUT/fit.log" 2>&1
for dtype in bfloat16 float32; do
    "$BIN/tjdnet" bench --ckpt_path "$OUT/experiments/gpu-check/best.ckpt" --device cuda --dtype "$dtype" \
        --gen_modes ar,hf_generate,speculative,speculative_tree --num_prompts 10 --repeats 3 --warmup 2 \
        --out "$OUT/bench_$dtype.json" 2>/dev/null | tee -a "$OUT/summary.txt"
done
