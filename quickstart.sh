#!/usr/bin/env bash
# Install snapctl (with its test dependencies) into .venv, start the bundled emulator on loopback, then plan
# manifests/ against it and apply that plan. Safe to run again: the second apply is a no-op.
set -euo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"   # test extras too: the README's second command runs the suite
SNAPCTL=.venv/bin/snapctl

# The emulator keeps its tasks in state/emulator-tasks.json so they survive restarts,
# like the real service keeps running tasks between your runs. It listens on the same
# port every run: the state is bound to the endpoint it was applied against.
port="${SNAPCTL_QUICKSTART_PORT:-18080}"
log=$(mktemp)
"$SNAPCTL" emulator --port "$port" --data state/emulator-tasks.json >"$log" 2>&1 &
emulator=$!
trap 'kill "$emulator" 2>/dev/null || true; wait "$emulator" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$log" | head -n1 || true)
  [ -n "$url" ] && break
  sleep 0.1
done
if [ -z "${url:-}" ]; then
  cat "$log" >&2
  echo "the emulator did not start on 127.0.0.1:$port; if that port is taken, run SNAPCTL_QUICKSTART_PORT=<free port> ./quickstart.sh" >&2
  echo "(the state in state/ is bound to the port it was first applied with: a new port needs a new state, or snapctl state rebind)" >&2
  exit 1
fi
echo "Emulator at $url"

# The emulator's documented default credentials, and demo values for the
# S3-compatible storage secrets that manifests/offsite-s3.yaml reads from the environment.
export SNAPCTL_ENDPOINT="$url"
export VOLC_ACCESSKEY=AKLTsnapctlemulator VOLC_SECRETKEY=snapctl-emulator-secret
export OFFSITE_ACCESS_KEY="${OFFSITE_ACCESS_KEY:-demo-offsite-access-key}"
export OFFSITE_SECRET_KEY="${OFFSITE_SECRET_KEY:-demo-offsite-secret-key}"

"$SNAPCTL" validate manifests/
# The plan is printed once, saved, and exactly that plan is applied (no second printing, no question).
"$SNAPCTL" plan manifests/ --out state/quickstart.plan
"$SNAPCTL" apply state/quickstart.plan
echo
.venv/bin/python - "$url" <<'PY'
import sys, httpx
print("Tasks running in the emulator:", httpx.get(sys.argv[1] + "/_emulator/stats").json()["tasks_running"])
PY
