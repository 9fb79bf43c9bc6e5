#!/usr/bin/env bash
# Run a queue of benchmark commands on a GPU machine in the background, so that it outlives the
# command that started it (a remote command may be capped at minutes, a queue takes longer), and
# collect the logs as they come.
#   bash benchmarks/gpu_queue.sh start STORE QUEUE   # QUEUE: lines "NAME: COMMAND", run in order from here
#   bash benchmarks/gpu_queue.sh wait STORE SECONDS [OUT]   # until the queue ends or SECONDS pass;
#                                                           # then each log's last line, logs -> OUT/logs.tar.xz
# Each command's output goes to STORE/logs/NAME.log; STORE/logs/timeline has its start, end and exit
# status. The queue keeps going past a failed command. Environment: whatever `start` was called with.
set -euo pipefail
verb=${1:?usage: gpu_queue.sh start STORE QUEUE | wait STORE SECONDS [OUT]}
store=${2:?store folder}
logs="$store/logs"
case "$verb" in
  start)
    queue=${3:?queue file}
    mkdir -p "$logs"
    cp "$queue" "$logs/queue.txt"
    setsid nohup bash -c '
      logs=$1
      while IFS= read -r line; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        name=${line%%:*}; cmd=${line#*:}
        echo "$(date -u +%T) start $name" >> "$logs/timeline"
        rc=0; PYTHONUNBUFFERED=1 bash -c "$cmd" > "$logs/$name.log" 2>&1 || rc=$?
        echo "$(date -u +%T) end $name rc=$rc" >> "$logs/timeline"
      done < "$logs/queue.txt"
      echo "$(date -u +%T) queue done" >> "$logs/timeline"
    ' queue "$logs" > "$logs/queue.out" 2>&1 < /dev/null &
    echo "queue started: $(grep -cv '^\s*\(#\|$\)' "$queue") commands, logs in $logs"
    ;;
  wait)
    seconds=${3:?seconds}; out=${4:-}
    end=$((SECONDS + seconds))
    while ((SECONDS < end)) && ! grep -q "queue done" "$logs/timeline" 2>/dev/null; do sleep 5; done
    cat "$logs/timeline" 2>/dev/null || echo "no timeline yet"
    for log in "$logs"/*.log; do [ -f "$log" ] && echo "$(basename "$log"): $(tail -n 1 "$log" | cut -c1-300)"; done
    if [ -n "$out" ]; then mkdir -p "$out" && tar -cJf "$out/logs.tar.xz" -C "$store" logs; fi
    ;;
  *) echo "usage: gpu_queue.sh start STORE QUEUE | wait STORE SECONDS [OUT]" >&2; exit 2 ;;
esac
