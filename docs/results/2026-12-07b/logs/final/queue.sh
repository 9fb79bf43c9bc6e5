source $HOME/store/jobs/env.sh
cd $S/code
run() { local name=$1; shift; t "start $name"; timeout ${TMO:-420} "$@" > $L/$name.log 2>&1; t "end $name rc=$?"; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); t "gpu $GPU"
for i in $(seq 1 180); do [ -f $S/smollm2_ready ] && break; sleep 1; done
t "smollm2_ready=$(ls $S/smollm2_ready 2>/dev/null)"
TMO=400 run updsmol python3 benchmarks/update.py --shapes smollm2 --variants tokens,compile_tokens --updates 5 --warmup 2 --profile $L/prof
TMO=150 run gputests python3 -m pytest -m gpu -q -p no:cacheprovider -rfE tests/engine/memory/test_kv_budget.py tests/engine/test_engine_gpu.py tests/train
t "queue done"
touch $S/queue_done
