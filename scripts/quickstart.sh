#!/usr/bin/env bash
# Quickstart: install the toolchains (idempotent), build Palisade and its plugins from source,
# then run the demo: a recorded attack replayed through the first-party detectors.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "[quickstart] building palisade and the plugins (first build takes a few minutes)" >&2
cargo build --release -p palisade-host
cargo xtask build-plugins

mkdir -p target/demo
rm -f target/demo/alerts.jsonl
echo "[quickstart] replaying examples/events/demo-attack.jsonl through target/plugins" >&2
./target/release/palisade replay examples/events/demo-attack.jsonl \
  --config examples/demo/palisade.toml --output target/demo/alerts.jsonl

python3 - <<'PY'
import json
alerts = [json.loads(l) for l in open("target/demo/alerts.jsonl")]
print(f"\n{len(alerts)} alerts (full JSON in target/demo/alerts.jsonl, audit in target/demo/audit.jsonl):\n")
for a in alerts:
    print(f"  {a['priority'].upper():<13} {a['rule']:<26} {a['message']}")
detections = [a for a in alerts if a["plugin"]["name"] != "palisade"]
if not detections:
    raise SystemExit("demo raised no detections: something is broken")
PY

# Then the same detectors on live kernel events (root only; says so when skipped).
bash scripts/live-demo.sh
