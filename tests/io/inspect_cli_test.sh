#!/bin/bash
# `fireq inspect` end to end: the real model summarizes, corrupt or missing input gives one line on
# stderr naming the file and a non-zero exit. Usage: inspect_cli_test.sh FIREQ_BINARY SOURCE_DIR
set -u
fireq=$1
model=$2/data/models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failures=0
check() {  # check DESCRIPTION CONDITION...
  local what=$1
  shift
  if ! "$@"; then
    echo "FAIL: $what"
    failures=$((failures + 1))
  fi
}

# Bad input: exit status != 0, exactly one line on stderr, that line names the path.
expect_one_line_error() {
  local path=$1
  shift
  "$fireq" inspect "$path" "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  check "$path: non-zero exit (got $rc)" test "$rc" -ne 0
  check "$path: one-line error, got: $(cat "$work/err")" test "$(wc -l <"$work/err")" -eq 1
  check "$path: error names the input" grep -qF -- "$(basename "$path")" "$work/err"
}

printf 'GGUF\003\000\000\000\001' >"$work/truncated.gguf"
expect_one_line_error "$work/truncated.gguf"
printf '\377\377\377\377\377\377\377\377{}' >"$work/huge_header.safetensors"
expect_one_line_error "$work/huge_header.safetensors"
printf '\020\000\000\000\000\000\000\000{"a": {"dtype":' >"$work/bad_json.safetensors"
expect_one_line_error "$work/bad_json.safetensors"
expect_one_line_error "$work/does_not_exist.gguf"
mkdir "$work/empty_dir"
expect_one_line_error "$work/empty_dir"
"$fireq" inspect --no-such-flag "$work/x" >/dev/null 2>&1
check "unknown flag: non-zero exit" test $? -ne 0

# A tiny quantized-looking HF directory: config.json with quantization_config + one safetensors file.
hf="$work/hf"
mkdir "$hf"
cat >"$hf/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
 "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
 "vocab_size": 40, "tie_word_embeddings": true,
 "quantization_config": {"quant_method": "fireq", "format_version": 1, "recipe": {"name": "w4a8"}}}
JSON
header='{"a.qweight":{"dtype":"U8","shape":[2,3],"data_offsets":[0,6]},"a.scales":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[6,8]}}'
while [ $(((${#header} + 8) % 8)) -ne 0 ]; do header="$header "; done
length=${#header}
{
  printf "\\$(printf '%03o' $((length & 255)))\\$(printf '%03o' $((length >> 8)))\\0\\0\\0\\0\\0\\0"
  printf '%s' "$header"
  printf 'abcdefgh'
} >"$hf/model.safetensors"
"$fireq" inspect "$hf" --tensors >"$work/out" 2>"$work/err"
check "HF directory: exit 0 ($(cat "$work/err"))" test $? -eq 0
for expected in "format:       safetensors (1 file)" "1 layers, hidden 64, heads 4 (kv 2" \
                'quant_method "fireq", format_version 1' 'recipe.name            "w4a8"' \
                "U8           1 tensors" "F8_E4M3      1 tensors" "a.scales"; do
  check "HF directory output has '$expected'" grep -qF -- "$expected" "$work/out"
done

if [ ! -f "$model" ]; then
  echo "real model not present ($model): skipping the success checks"
  [ "$failures" -eq 0 ] && exit 77
  exit 1
fi
"$fireq" inspect "$model" --tensors >"$work/out" 2>"$work/err"
check "real model: exit 0 ($(cat "$work/err"))" test $? -eq 0
for expected in "architecture: llama" "30 layers, hidden 576, heads 9 (kv 3" "head_dim 64" \
                "vocab 49152" "tied embeddings" "parameters:   134.5 M" "tensors:      272" \
                "Q4_1       210 tensors" "Q8_0         1 tensors" "F32         61 tensors" \
                "size on disk: 93.8 MiB (98362432 bytes)" "quantization: GGUF block formats" \
                "blk.29.ffn_down.weight"; do
  check "real model output has '$expected'" grep -qF -- "$expected" "$work/out"
done
check "--tensors lists every tensor" test "$(grep -c '^blk\.' "$work/out")" -eq 270
cat "$work/out" | head -20
exit $((failures > 0))
