#!/usr/bin/env bash
# One prepared benchmark run for an accelerator host: the pytest-benchmark suite (--quick), then
# VGG16 at 224x224 side by side with Captum (Score-CAM: pytorch-grad-cam's
# algorithm in torch) at the usual settings, batch 1/8/32; the other methods;
# ResNet-50 and ViT-B/16 beside Captum and IG's memory; IG with each chunk loop; bfloat16; LRP and CRP beside zennit and zennit-crp;
# a folder run end to end against the kernel alone.
# Usage: bash benchmarks/run_all.sh OUTDIR   (needs jaxplain installed; captum/torch for the Captum column)
set -uo pipefail
out=${1:?usage: run_all.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import jax, flax, numpy
print("jax", jax.__version__, "flax", flax.__version__, "numpy", numpy.__version__, jax.devices())
try:
    import torch, captum
    print("torch", torch.__version__, "captum", captum.__version__, torch.cuda.is_available())
except ImportError as e:
    print("no captum:", e)
PY
timeout "${QUICK_LIMIT:-240}" python3 -m pytest benchmarks/ --quick -q -p no:cacheprovider \
  --benchmark-json "$out/quick.json" --benchmark-columns=median,rounds 2>&1 | tail -n 40 | tee "$out/quick.txt"
timeout "${CAPTUM_LIMIT:-240}" python3 -m benchmarks.compare --batch 1 8 32 --min-time 0.5 \
  --methods gradient gradient_x_input guided_backprop deconvnet grad_cam "integrated_gradients(steps=50)" "smoothgrad(samples=50)" occlusion score_cam \
  --json "$out/vs_captum.json" 2>&1 | grep -v Warning | tee "$out/vs_captum.txt"
# ResNet-50 and ViT-B/16 beside Captum on torch twins with the same weights (saliency, IG, Grad-CAM;
# guided backprop on ResNet-50), then IG's peak memory in fresh processes
for m in resnet50 vit_b16; do
  timeout "${BEYOND_LIMIT:-300}" python3 -m benchmarks.compare --model $m --batch 1 8 32 --min-time 0.5 \
    --methods gradient "integrated_gradients(steps=50)" grad_cam $([ $m = resnet50 ] && echo guided_backprop) \
    --json "$out/vs_captum_$m.json" 2>&1 | grep -v Warning | tee "$out/vs_captum_$m.txt"
  timeout "${MEMORY_LIMIT:-120}" python3 -m benchmarks.ig_memory --model $m --batch 8 --json "$out/ig_memory_$m.json" \
    2>&1 | tee "$out/ig_memory_$m.txt"
done
timeout "${REST_LIMIT:-150}" python3 -m jaxplain.cli bench --batch 8 32 --min-time 0.5 \
  --methods "expected_gradients(samples=32)" "blur_ig(steps=100)" "vargrad(samples=50)" "guided_ig(steps=200)" rise \
  --json "$out/rest.json" 2>&1 | tee "$out/rest.txt"
for loop in host unroll; do  # the default on GPU is scan (in the runs above)
  JAXPLAIN_CHUNK_LOOP=$loop timeout "${IG_LIMIT:-60}" python3 -m jaxplain.cli bench --batch 8 32 --min-time 0.5 \
    --methods "integrated_gradients(steps=50)" --json "$out/ig_$loop.json" 2>&1 | tee "$out/ig_$loop.txt"
done
timeout "${BF16_LIMIT:-90}" python3 -m jaxplain.cli bench --batch 8 32 --min-time 0.5 --precision bfloat16 \
  --methods gradient "integrated_gradients(steps=50)" --json "$out/bf16.json" 2>&1 | tee "$out/bf16.txt"
# LRP (epsilon_plus, epsilon_gamma_box) and the gradient beside zennit's Gradient on VGG16 and ResNet-50 at batch 8,
# LRP in bfloat16 against float32, CRP of 64 channels of block4_conv3 beside zennit-crp's CondAttribution
timeout "${LRP_LIMIT:-600}" python3 -m benchmarks.lrp_vs_zennit --batch 8 --json "$out/lrp_vs_zennit.json" \
  2>&1 | grep -v Warning | tee "$out/lrp_vs_zennit.txt"
# every metric beside Quantus 0.6 (its torch path on the same device): the small model at the
# reference settings, then VGG16 at reduced ones (benchmarks/metrics_vs_quantus.py says which)
timeout "${QUANTUS_LIMIT:-300}" python3 -m benchmarks.metrics_vs_quantus --model tiny --json "$out/vs_quantus_tiny.json" \
  2>&1 | tee "$out/vs_quantus_tiny.txt"
timeout "${QUANTUS_VGG_LIMIT:-420}" python3 -m benchmarks.metrics_vs_quantus --model vgg16 --json "$out/vs_quantus_vgg16.json" \
  2>&1 | tee "$out/vs_quantus_vgg16.txt"
# the surrogate family (feature_ablation, lime, kernel_shap, xrai once registered) beside Captum, the lime
# package and PAIR's XRAI on a torch twin: the small model at lime's 1000 samples, then VGG16 at 64
timeout "${SURROGATE_LIMIT:-420}" python3 -m benchmarks.surrogates_vs_peers --model tiny --json "$out/vs_surrogates_tiny.json" \
  2>&1 | tee "$out/vs_surrogates_tiny.txt"
timeout "${SURROGATE_VGG_LIMIT:-600}" python3 -m benchmarks.surrogates_vs_peers --model vgg16 --json "$out/vs_surrogates_vgg16.json" \
  2>&1 | tee "$out/vs_surrogates_vgg16.txt"
# `jaxplain explain FOLDER` end to end (decoding, overlays, zarr, JSONL) against the kernel alone, interleaved
timeout "${FOLDER_LIMIT:-1800}" python3 -m benchmarks.folder_run --images 500 --model vgg16 --method gradient --batch 8 \
  --json "$out/folder_run.json" 2>&1 | grep -v Warning | tee "$out/folder_run.txt"
