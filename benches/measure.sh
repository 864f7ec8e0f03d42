# Sourced by the timing scripts: `measure NAME COMMAND…` runs COMMAND under
# /usr/bin/time -v and prints "NAME wall=… peak_rss_kb=…" (its output is discarded; on
# failure what time printed is shown and the script exits). Needs $work, a scratch dir.
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" >/dev/null 2>"$work/time" || { cat "$work/time"; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time")
  echo "$name wall=$wall peak_rss_kb=$rss"
}
