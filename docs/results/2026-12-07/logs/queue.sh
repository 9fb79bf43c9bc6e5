source $HOME/store/jobs/env.sh
cd $S/code
run() { local name=$1; shift; t "start $name"; timeout ${TMO:-420} "$@" > $L/$name.log 2>&1; t "end $name rc=$?"; }
TMO=240 run pytest_gpu python3 -m pytest -m gpu -q -p no:cacheprovider -rfE
run eng4b_lora_fold python3 benchmarks/engine.py --skip-generate --lora-rank 32 --adapter-dtype model
run eng4b_nolora python3 benchmarks/engine.py --skip-generate
run eng4b_lora_nofold python3 benchmarks/engine.py --skip-generate --lora-rank 32 --adapter-dtype model --no-fold-adapters
run upd4b_2048 python3 benchmarks/update.py --shapes 4b_2048 --variants bf16 --updates 1 --warmup 1 --adapter-dtype model
if [ -f $S/smollm2_ready ]; then
run engsmol_lora_fold python3 benchmarks/engine.py --model smollm2-135m --skip-generate --lora-rank 32 --adapter-dtype model --b-new-tokens 64
run updsmol_model python3 benchmarks/update.py --shapes smollm2 --variants tokens,compile_tokens --updates 3 --warmup 1 --adapter-dtype model --profile $L/prof
run profsmol python3 benchmarks/decode_profile.py --model smollm2-135m --batch 64 --prompt-len 120 --lora-rank 32 --adapter-dtype model
fi
run upd4b_512 python3 benchmarks/update.py --shapes 4b_512 --variants bf16,base --updates 2 --warmup 1 --adapter-dtype model
t "queue done"
touch $S/queue_done
