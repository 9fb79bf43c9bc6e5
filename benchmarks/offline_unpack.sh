#!/usr/bin/env bash
# Unpack what benchmarks/offline_pack.py packed, on the GPU machine, from the repository root:
#   bash benchmarks/offline_unpack.sh PACK STORE     (e.g. .carry $HOME/store)
# Run it after each transfer: it keeps the pack folders that arrived under STORE/parts (a folder
# outside the working tree outlives it), installs the wheels into STORE/site, puts the tokenizer in
# STORE/cache, and once every GGUF part is there assembles the file into the cache and checks its
# sha256. Then: export PYTHONPATH=STORE/site:. PICORL_CACHE=STORE/cache
set -euo pipefail
pack=${1:?usage: offline_unpack.sh PACK STORE}
store=${2:?usage: offline_unpack.sh PACK STORE}
mkdir -p "$store/parts" "$store/cache"
for folder in "$pack"/p*/; do
  [ -d "$folder" ] && cp -n "$folder"* "$store/parts/"
done
if [ -f "$store/parts/small.tar.xz" ] && [ ! -e "$store/site/.installed" ]; then
  tar -xJf "$store/parts/small.tar.xz" -C "$store"
  python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
    --target "$store/site" "$store"/wheels/*.whl
  touch "$store/site/.installed"
  echo "installed $(ls "$store"/wheels | tr '\n' ' ')into $store/site; tokenizer in $store/cache"
fi
manifest="$store/parts/manifest.txt"
if [ -f "$manifest" ] && grep -q '^gguf ' "$manifest"; then
  read -r _ name file parts sha < <(grep '^gguf ' "$manifest")
  dest="$store/cache/$name/$file"
  present=$(find "$store/parts" -name "$file.part*" | wc -l)
  if [ -f "$dest" ]; then
    echo "$file: in place"
  elif [ "$present" -lt "$parts" ]; then
    echo "$file: $present of $parts parts so far"
  else
    mkdir -p "$store/cache/$name"
    for ((i = 1; i <= parts; i++)); do cat "$store/parts/$file.part$i"; done > "$dest.tmp"
    echo "$sha  $dest.tmp" | sha256sum -c --quiet
    mv "$dest.tmp" "$dest"
    echo "$file: assembled and checked"
  fi
fi
echo "export PYTHONPATH=$store/site:. PICORL_CACHE=$store/cache"
