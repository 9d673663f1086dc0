#!/usr/bin/env bash
# Compress a model in a pipeline: upload, quantize for CPUs, gate on the report's numbers, download.
#   TENSORPRESS_URL=http://tensorpress:8000 TENSORPRESS_API_KEY=tp_... \
#     [TARGET='{"objective": "size"}'] examples/compress.sh model.onnx calibration.npz evaluation.npz out/ [max_drop]
# Exit status: 0 when the compressed model is in out/, non-zero when anything (the job, the gate) fails.
set -euo pipefail
model=$1 calibration=$2 evaluation=$3 out=$4 max_drop=${5:-0.01}
target=${TARGET:-'{"batch_sizes": [1, 8], "objective": "latency"}'}  # what "better" means for this model
mkdir -p "$out"

# 1. upload + compress; --wait follows the job; exit 3 if it regressed (slower, larger or less accurate)
tensorpress jobs submit "$model" --preset cpu-int8 \
  --dataset "calibration=$calibration" --dataset "evaluation=$evaluation" \
  --evaluation "{\"max_accuracy_drop\": $max_drop}" --target "$target" \
  --wait --json > "$out/job.json"

# 2. gate on the report's numbers (the service's gate already held; this is the pipeline's own policy)
job_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$out/job.json")
tensorpress jobs status "$job_id" --json > /dev/null
python3 - "$out/job.json" "$max_drop" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
original, result, metric = job["metrics"]["original"], job["metrics"]["result"], job["metrics"]["metric"]
drop = original[metric] - result[metric]
ratio = result["size_bytes"] / original["size_bytes"]
print(f"{metric}: {original[metric]:.4f} -> {result[metric]:.4f} (drop {drop:.4f}); size x{ratio:.2f}")
if drop > float(sys.argv[2]) or ratio >= 1:
    sys.exit("gate: the compressed model is not good enough")
PY

# 3. download the result (resumable, sha256-verified)
artifact=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(max(j["artifacts"], key=lambda a: a["step"])["id"])' "$out/job.json")
tensorpress artifacts download "$artifact" -o "$out/model.onnx"
