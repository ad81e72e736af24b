# Sourced by the gpu_*.sh experiments (from the repository root): prints the device and versions, then
# builds the playground data into playground/data (log in $OUT/build.log). Needs OUT set.
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
t0=$(date +%s)
python3 -m llava_restore.playground build > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
