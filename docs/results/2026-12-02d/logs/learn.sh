source $HOME/store/jobs/env.sh
cd $S/code
L=$S/logs; R=$S/runs; mkdir -p $L $R
t() { echo "$(date -u +%T) $*" >> $L/timeline; }
t start
# P1: the recipe, alone on the GPU until its SFT adapter is written
picorl train --config configs/count-smollm2.toml --name count-dv --kv-cache-gib 12 --runs-dir $R > $L/count-dv.log 2>&1 &
P1=$!
until [ -f $R/count-dv/sft_adapter/adapter_model.safetensors ] || ! kill -0 $P1 2>/dev/null; do sleep 5; done
sleep 5
t "P1 sft adapter"
# the RL ablation from the recipe's own SFT adapter (same train tasks and sampling seeds as its RL)
A="--config configs/count-smollm2.toml --init-adapter $R/count-dv/sft_adapter --sft-steps 0 --kv-cache-gib 12 --runs-dir $R"
picorl train $A --name abl-seq --credit sequence > $L/abl-seq.log 2>&1 &
wait $P1; t "P1 rc=$?"
wait; t "all done"
