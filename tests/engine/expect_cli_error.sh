#!/usr/bin/env bash
# Runs a command that must fail on bad input: non-zero exit and exactly one line of output, of the
# form "fireq <command>: error: <message>".
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
[ "$rc" -ne 0 ] || { echo "expected a non-zero exit, got 0"; exit 1; }
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || { echo "expected one line of output"; exit 1; }
printf '%s\n' "$out" | grep -q '^fireq [a-z]*: error: ' || { echo "expected 'fireq <cmd>: error: ...'"; exit 1; }
