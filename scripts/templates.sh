#!/usr/bin/env bash
# Pushes each Platform.sh template checked out under DIR, unmodified, to a Lockstep started for
# the run, and prints how far each one got: config check, build, deploy, serves, and the first
# failure. Not part of CI: the templates' builds download from package registries. It fetches
# nothing itself; check the templates out first, for example:
#
#   mkdir ~/templates && cd ~/templates
#   for t in django4 wagtail express strapi4 nextjs flask meilisearch golang laravel; do
#     git clone https://github.com/platformsh-templates/$t
#   done
#   ~/lockstep/scripts/templates.sh ~/templates
#
# A failure caused by the machine rather than by Lockstep (a host its network cannot reach) is
# named as such. Each push's whole output is kept in LOGS when that variable names a folder.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 DIR   (DIR holds one checked-out template per folder)" >&2
  exit 2
fi
templates=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)

cargo build --locked --quiet --manifest-path "$root/Cargo.toml" -p lockstep
lockstep="$root/target/debug/lockstep"

work=$(mktemp -d)
data="$work/lockstep"
"$lockstep" up --data-dir "$data" >"$work/up.log" 2>&1 &
up=$!
stop() {
  kill -INT "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT

for _ in $(seq 300); do
  [ -f "$data/endpoints.json" ] && break
  kill -0 "$up" 2>/dev/null || { cat "$work/up.log" >&2; exit 1; }
  sleep 0.2
done
endpoint() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$data/endpoints.json" "$1"; }
remote=$(endpoint git)
edge_port=$(endpoint edge | sed -E 's/.*:([0-9]+).*/\1/')

# The first line of a push's output that says what went wrong, and whether the machine caused it.
first_failure() {
  local log=$1
  local unreachable
  unreachable=$(grep -oE "(Could not resolve host:? [^ ]+|getaddrinfo (ENOTFOUND|EAI_AGAIN) [^ ]+|Temporary failure in name resolution|Name or service not known|Network is unreachable)" "$log" | head -1 || true)
  if [ -n "$unreachable" ]; then
    echo "machine: cannot reach the network (${unreachable})"
    return
  fi
  { grep -E "^remote: (error|.*failed|.*[Ee]rror)" "$log" || true; } | head -1 | sed -E 's/^remote: +//' | cut -c1-110
}

rows=()
for folder in "$templates"/*/; do
  name=$(basename "$folder")
  branch="t-$(echo "$name" | tr -c 'a-z0-9\n' '-' | cut -c1-30)"
  copy="$work/$name"
  git clone --quiet "$folder" "$copy"
  log="${LOGS:-$work}/$name.log"

  if "$lockstep" config check "$copy" >"$log" 2>&1; then check=ok; else check=FAIL; fi
  git -C "$copy" -c credential.helper="!$lockstep --data-dir $data credential" \
    push "$remote" "HEAD:refs/heads/$branch" >>"$log" 2>&1 || true

  if grep -q "^remote:   Image " "$log"; then build=ok; else build=FAIL; fi
  if grep -q "^remote: Deployment completed" "$log"; then deploy=ok; else deploy=FAIL; fi
  # A redirect route (to `www.{default}`) is followed once, through the edge again.
  answer=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' --max-time 30 \
    -H "Host: $branch.localhost" "http://127.0.0.1:$edge_port/" || true)
  status=${answer%% *}
  case "$status" in
    3??)
      target=${answer#* }
      target_host=$(echo "$target" | sed -E 's|^[a-z]+://([^/:]+).*|\1|')
      target_path=$(echo "$target" | sed -E 's|^[a-z]+://[^/]+||')
      followed=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
        -H "Host: $target_host" "http://127.0.0.1:$edge_port${target_path:-/}" || true)
      status="$status>$followed"
      ;;
  esac
  case "${status##*>}" in
    2??) serves="ok ($status)" ;;
    *) serves="FAIL ($status)" ;;
  esac
  failure=$(first_failure "$log")
  if [ "$check" = FAIL ] && [ -z "$failure" ]; then
    failure=$({ grep -m1 -E "^error" "$log" || true; } | cut -c1-110)
  fi
  rows+=("$(printf '| %-12s | %-6s | %-6s | %-6s | %-10s | %s |' "$name" "$check" "$build" "$deploy" "$serves" "${failure:--}")")
  echo "$name: check $check, build $build, deploy $deploy, serves $serves" >&2
done

printf '| %-12s | %-6s | %-6s | %-6s | %-10s | %s |\n' template check build deploy serves "first failure"
printf '|%s|%s|%s|%s|%s|%s|\n' "--------------" "--------" "--------" "--------" "------------" "---"
printf '%s\n' "${rows[@]}"
