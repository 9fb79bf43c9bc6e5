source $HOME/store/jobs/env.sh
cd $S/code
run() { local name=$1; shift; t "start $name"; timeout ${TMO:-420} "$@" > $L/$name.log 2>&1; t "end $name rc=$?"; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); t "gpu $GPU"
if echo "$GPU" | grep -q H200; then
  run eng4b_nolora python3 benchmarks/engine.py --skip-generate
  run eng4b_lora_fold python3 benchmarks/engine.py --skip-generate --lora-rank 32
fi
for i in $(seq 1 180); do [ -f $S/smollm2_ready ] && break; sleep 1; done
t "smollm2_ready=$(ls $S/smollm2_ready 2>/dev/null)"
run updsmol python3 benchmarks/update.py --shapes smollm2 --variants tokens,compile_tokens,base --updates 3 --warmup 1 --profile $L/prof
run updsmol_nockpt python3 benchmarks/update.py --shapes smollm2 --variants tokens,compile_tokens --updates 3 --warmup 1 --gradient-checkpointing off
run engsmol python3 benchmarks/engine.py --model smollm2-135m --skip-generate --lora-rank 32 --b-new-tokens 64
run profsmol python3 benchmarks/decode_profile.py --model smollm2-135m --batch 64 --prompt-len 120 --lora-rank 32
t "queue done"
touch $S/queue_done
# (a watcher killed updsmol_nockpt when it reached compile_tokens; then, by hand:)
# python3 benchmarks/update.py --shapes smollm2 --variants tokens,bf16_tokens --updates 5 --warmup 2 --profile $L/prof2 > $L/updsmol2.log
