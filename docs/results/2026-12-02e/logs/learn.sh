source $HOME/store/jobs/env.sh
cd $S/code
C="--config configs/count-smollm2.toml --name count --runs-dir $R"
t "start count (the recipe, alone on the GPU)"
$PICORL train $C > $L/count.log 2>&1 &
P=$!
sleep ${INTERRUPT_AFTER:-420}
t "SIGINT to count"
kill -INT $P
wait $P; t "count rc=$? (interrupted)"
t "resume count"
$PICORL train $C --resume > $L/count-resume.log 2>&1
t "count resume rc=$?"
# Qwen2.5-Coder-0.5B end to end, once its file has arrived and been dequantized (qprep.sh)
for i in $(seq 1 60); do [ -f $S/qwen_ready ] && break; sleep 5; done
t "start qwen (ready: $(ls $S/qwen_ready 2>/dev/null))"
$PICORL train --config configs/count-smollm2.toml --model qwen2.5-coder-0.5b --name qwen --runs-dir $R \
  --sft-steps 300 --num-updates 4 --eval-every 4 --sft-micro-batch-tokens 32768 > $L/qwen.log 2>&1
t "qwen rc=$?"
