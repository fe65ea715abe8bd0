#!/usr/bin/env bash
# Live demo: runs the daemon on the kernel (eBPF) source with the first-party plugins, performs a
# few harmless suspicious actions, stops the daemon and prints the alerts it raised.
# Needs root (eBPF). The actions: read /etc/shadow with cat, spawn a shell from a binary named
# like a web server, and open /etc/passwd for appending without writing a byte.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "[live-demo] SKIPPED: the kernel source needs root (run: sudo bash scripts/live-demo.sh)" >&2
  exit 0
fi

out=target/demo/live-alerts.jsonl
log=target/demo/live.log
mkdir -p target/demo
rm -f "$out" "$log"
# The daemon refuses a plugin directory others can write to (that would hand them root), so run
# from a private root-owned copy rather than wherever this checkout happens to live.
work=$(mktemp -d)
mkdir -m 755 "$work/plugins"
cp target/plugins/*.wasm target/plugins/*.toml "$work/plugins/"
chmod 644 "$work/plugins/"*
./target/release/palisade run --config examples/demo/palisade.toml --plugins "$work/plugins" \
  --output "$out" 2>"$log" &
daemon=$!
trap 'kill -INT $daemon 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  grep -q "palisade running" "$log" && break
  kill -0 "$daemon" 2>/dev/null || { cat "$log" >&2; echo "[live-demo] daemon exited" >&2; exit 1; }
  sleep 0.2
done
grep -q "palisade running" "$log" || { cat "$log" >&2; echo "[live-demo] daemon did not start" >&2; exit 1; }
grep "ebpf probes attached" "$log" | sed 's/hooks=.*//' >&2 || true

cp /bin/sh "$work/nginx"
echo "[live-demo] cat /etc/shadow; a shell spawned by 'nginx'; /etc/passwd opened for append" >&2
cat /etc/shadow >/dev/null
"$work/nginx" -c '/bin/sh -c true'
python3 -c "open('/etc/passwd', 'a').close()"
sleep 2
kill -INT "$daemon"
wait "$daemon" || true
trap - EXIT
rm -rf "$work"

python3 - "$out" <<'PY'
import json, sys
alerts = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nlive: {len(alerts)} alerts from the kernel source (full JSON in {sys.argv[1]}):\n")
for a in alerts:
    print(f"  {a['priority'].upper():<13} {a['rule']:<30} {a['message'][:110]}")
rules = {a["rule"] for a in alerts}
missing = {"sensitive-file-read", "shell-spawned-by-service", "sensitive-file-write"} - rules
if missing:
    raise SystemExit(f"live demo: expected detections missing: {sorted(missing)}")
PY
