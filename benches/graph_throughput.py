#!/usr/bin/env python3
"""Graph throughput benchmark: a full backup (Exchange, then OneDrive) of a generated tenant
by the real m365bk binary against the tenant simulator with 20 ms per request and Microsoft's
throttling limits on. Run through scripts/bench-graph.sh (which builds the binaries).

    benches/graph_throughput.py --bin DIR [--work DIR] [--users 20] [--messages 20000] [--files 5000]

Prints items/s, MB/s, requests per item, the share of requests answered 429, the ratio of the
throttle-bound optimum to the measured time, peak RSS of each m365bk process, and checks every
message and file against the simulator's ground truth (exit 1 if any is missing).

The throttle-bound optimum, computed from the simulator's configuration and the corpus:

  Outlook, per mailbox m with M_m messages in F_m folders: at least R_m = M_m + F_m requests
  (one $value per message, at least one delta page per folder). At most C = 4 requests are in
  flight per mailbox and each takes at least L = 20 ms, and at most N = 10,000 requests fit in
  W = 600 s, so the mailbox needs at least
      T_m = max(R_m * L / C, W * floor((R_m - 1) / N)).
  Mailboxes are independent, so the Exchange backup needs at least T_ol = max_m T_m.

  OneDrive, for the whole tenant: every file costs at least 1 resource unit (its /content
  request), every drive's delta walk 2 RU for the first page (no token) plus 1 RU per further
  page of P = 200 items, and every drive lookup 1 RU: U RU in all. The app may spend B = 1,250
  RU in any 60 s window, so the last unit can go no sooner than
      T_sp = 60 s * floor((U - 1) / B) + L.

  The two services run one after the other (two m365bk invocations), so the optimum is
  T_opt = T_ol + T_sp, and the ratio printed is T_opt / T_measured (1.0 = as fast as the limits
  allow; the target is >= 0.8).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict

TENANT = "8d8f7c3a-2a0e-4f5b-9b1e-5a0c3c2f1d11"
CLIENT = "5b1f3c8e-7a2d-4e9f-b6c1-0d2e4f6a8b10"
SECRET = "bench-secret-value"
LATENCY_MS = 20
OUTLOOK_CONCURRENCY = 4
OUTLOOK_REQUESTS = 10_000
OUTLOOK_WINDOW_S = 600
RU_PER_MINUTE = 1_250
MAIL_PAGE = 100
DRIVE_PAGE = 200
FOLDERS = ["Inbox", "Inbox/Projects", "Archive/2024", "Sent Items", "Deleted Items"]
DRIVE_DIRS = ["Documents", "Documents/Reports", "Pictures", "Desktop"]
WORDS = (
    "quarterly budget review meeting agenda minutes follow up draft final contract invoice "
    "schedule project milestone release notes customer feedback design proposal summary "
    "travel expenses approval request update status report team offsite planning"
).split()


def generate(corpus, users, messages, files):
    """A deterministic tenant: `users` users sharing `messages` small text messages and `files`
    small files (half text, half random bytes) round-robin."""
    stamp = f"v1 {users} {messages} {files}"
    if os.path.isfile(f"{corpus}/.stamp") and open(f"{corpus}/.stamp").read() == stamp:
        return
    shutil.rmtree(corpus, ignore_errors=True)
    rng = random.Random(20261129)
    upns = [f"user{u:02d}@contoso.onmicrosoft.com" for u in range(users)]
    for i in range(messages):
        u = upns[i % users]
        folder = FOLDERS[(i // users) % len(FOLDERS)]
        d = f"{corpus}/users/{u}/mail/{folder}"
        os.makedirs(d, exist_ok=True)
        subject = " ".join(rng.choice(WORDS) for _ in range(5))
        body = "\r\n".join(
            " ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randint(10, 60))
        )
        eml = (
            f"From: Sender {i % 97} <sender{i % 97}@fabrikam.example>\r\n"
            f"To: {u}\r\nSubject: {subject} #{i}\r\n"
            f"Date: Mon, {1 + i % 28} Jan 2024 {i % 24:02d}:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench.{i}@fabrikam.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}\r\n"
        )
        with open(f"{d}/{i:06d}.eml", "w") as f:
            f.write(eml)
    for i in range(files):
        u = upns[i % users]
        sub = DRIVE_DIRS[(i // users) % len(DRIVE_DIRS)]
        d = f"{corpus}/users/{u}/drive/{sub}"
        os.makedirs(d, exist_ok=True)
        size = rng.randint(1024, 48 * 1024)
        if i % 2:
            data = rng.randbytes(size)
            name = f"{d}/blob-{i:05d}.bin"
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(size // 7))
            data = text.encode()
            name = f"{d}/notes-{i:05d}.txt"
        with open(name, "wb") as f:
            f.write(data)
    with open(f"{corpus}/.stamp", "w") as f:
        f.write(stamp)


def optimum(corpus):
    """T_ol, T_sp and the counts behind them (see the module docstring)."""
    t_ol = 0.0
    ru = 0
    worst = None
    for u in sorted(os.listdir(f"{corpus}/users")):
        mail = f"{corpus}/users/{u}/mail"
        per_folder = Counter()
        folders = set()
        for root, dirs, names in os.walk(mail):
            rel = os.path.relpath(root, mail)
            if rel != ".":
                folders.add(rel)
            per_folder[rel] += sum(1 for n in names if n.endswith(".eml"))
        msgs = sum(per_folder.values())
        r = msgs + len(folders)
        t = max(
            r * LATENCY_MS / 1000 / OUTLOOK_CONCURRENCY,
            OUTLOOK_WINDOW_S * ((r - 1) // OUTLOOK_REQUESTS),
        )
        if t > t_ol:
            t_ol, worst = t, (u, r)
        drive = f"{corpus}/users/{u}/drive"
        items = 0
        nfiles = 0
        for root, dirs, names in os.walk(drive):
            items += len(dirs) + len(names)
            nfiles += len(names)
        pages = max(1, -(-(items + 1) // DRIVE_PAGE))
        ru += nfiles + 2 + (pages - 1) + 1
    t_sp = 60 * ((ru - 1) // RU_PER_MINUTE) + LATENCY_MS / 1000
    return t_ol, t_sp, worst, ru


def run_measured(cmd, env):
    """Runs `cmd`; returns (seconds, peak RSS in KiB, stdout)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(env["BENCH_LOG"], "ab"))
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    secs = time.monotonic() - start
    if p.returncode not in (0,):
        sys.exit(f"{' '.join(cmd)} exited {p.returncode}; see {env['BENCH_LOG']}")
    return secs, usage.ru_maxrss, out


def get(url):
    with urllib.request.urlopen(url, timeout=600) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="directory holding m365bk and m365bk-tenant-sim")
    ap.add_argument("--work", default="bench-work")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=5_000)
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    corpus = f"{work}/corpus"
    t = time.monotonic()
    generate(corpus, a.users, a.messages, a.files)
    print(f"corpus: {a.users} users, {a.messages} messages, {a.files} files "
          f"({time.monotonic() - t:.1f} s to generate or check)")
    run = f"{work}/run"
    shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run)
    roles = sorted({
        "Mail.Read", "MailboxSettings.Read", "User.Read.All", "Contacts.Read",
        "Calendars.Read", "Notes.Read.All", "Files.Read.All",
    })
    with open(f"{run}/tenant.toml", "w") as f:
        f.write(
            f'tenant_id = "{TENANT}"\n[[apps]]\nclient_id = "{CLIENT}"\n'
            f'client_secret = "{SECRET}"\nroles = {json.dumps(roles)}\n'
            f"[faults]\nlatency_ms = {LATENCY_MS}\n"
            f"[faults.throttling.outlook]\n"
            f"concurrent_requests = {OUTLOOK_CONCURRENCY}\nrequests_per_window = {OUTLOOK_REQUESTS}\n"
            f"window_secs = {OUTLOOK_WINDOW_S}\n"
            f"[faults.throttling.onedrive]\nresource_units_per_minute = {RU_PER_MINUTE}\n"
        )
    sim = subprocess.Popen(
        [f"{a.bin}/m365bk-tenant-sim", "--corpus", corpus, "--tenant-config",
         f"{run}/tenant.toml", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=open(f"{run}/sim.log", "wb"), text=True,
    )
    try:
        line = sim.stdout.readline()
        if not line.startswith("listening on "):
            sys.exit(f"the simulator did not start; see {run}/sim.log")
        base = line.split("listening on ", 1)[1].strip()
        with open(f"{run}/m365bk.toml", "w") as f:
            f.write(
                f'[tenant]\ntenant_id = "{TENANT}"\nclient_id = "{CLIENT}"\n'
                f'authority_url = "{base}"\ngraph_url = "{base}/v1.0"\n'
                f'[repository]\nurl = "{run}/repository"\n'
                f'[catalog]\npath = "{run}/catalog.sqlite"\n'
            )
        env = dict(os.environ)
        env.update({
            "M365BK_CLIENT_SECRET": SECRET,
            "M365BK_PASSPHRASE": "bench passphrase",
            "M365BK_LOG": "info",
            "BENCH_LOG": f"{run}/m365bk.log",
        })
        m = [f"{a.bin}/m365bk", "--config", f"{run}/m365bk.toml"]
        run_measured(m + ["init"], env)
        urllib.request.urlopen(urllib.request.Request(f"{base}/_sim/requests", method="DELETE"))
        results = {}
        for service in ("exchange", "onedrive"):
            secs, rss, out = run_measured(m + ["--json", "backup", "--service", service, "--all-users"], env)
            results[service] = (secs, rss, json.loads(out))
            print(f"{service}: {secs:.1f} s, peak RSS {rss / 1024:.0f} MiB")
        log = get(f"{base}/_sim/requests")
        faults = get(f"{base}/_sim/admin/faults")

        # Ground truth and what was stored.
        lost = 0
        stored_msgs = stored_files = 0
        for service, area, kind in (("exchange", "mail", "message"), ("onedrive", "drive", "file")):
            summary = results[service][2]
            if summary["outcome"] != "ok" or summary["failed_resources"]:
                print(f"{service}: outcome {summary['outcome']}, failed {summary['failed_resources']}")
            by_user = {s["resource"]: s["id"] for s in summary["snapshots"]}
            for u in sorted(os.listdir(f"{corpus}/users")):
                truth = Counter()
                for e in get(f"{base}/_sim/admin/users/{u}/export")[area]:
                    if e.get("folder") is not True:
                        truth[e["sha256"]] += 1
                have = Counter()
                if u in by_user:
                    _, _, out = run_measured(m + ["--json", "ls", by_user[u]], env)
                    for i in json.loads(out):
                        if i["kind"] == kind:
                            have[i.get("sha256") or i["path"]] += 1
                n_truth, n_have = sum(truth.values()), sum(have.values())
                lost += max(0, n_truth - n_have)
                if kind == "message":
                    stored_msgs += n_have
                else:
                    stored_files += n_have
        items = stored_msgs + stored_files
        total_s = results["exchange"][0] + results["onedrive"][0]
        bytes_in = sum(results[s][2]["bytes_in"] for s in results)
        data = [e for e in log if not e["path"].endswith("/oauth2/v2.0/token")]
        n429 = sum(1 for e in data if e["status"] == 429)
        t_ol, t_sp, worst, ru = optimum(corpus)
        t_opt = t_ol + t_sp
        by_service = defaultdict(int)
        for e in data:
            by_service["drive" if ("/drive" in e["path"] or e["path"].startswith("/_download")) else "mail"] += 1
        print()
        print("Graph throughput benchmark")
        print(f"  items stored        {items} ({stored_msgs} messages, {stored_files} files); lost: {lost}")
        print(f"  time                {total_s:.1f} s (exchange {results['exchange'][0]:.1f} s, onedrive {results['onedrive'][0]:.1f} s)")
        print(f"  items/s             {items / total_s:.1f}")
        print(f"  MB/s                {bytes_in / 1e6 / total_s:.2f} ({bytes_in / 1e6:.1f} MB read)")
        print(f"  requests per item   {len(data) / max(items, 1):.2f} ({len(data)} requests: {by_service['mail']} Outlook/other, {by_service['drive']} OneDrive incl. download hops)")
        print(f"  429 share           {100 * n429 / max(len(data), 1):.3f} % ({n429} of {len(data)})")
        print(f"  simulator counters  {json.dumps(faults['throttled'])}")
        print(f"  optimum             T_ol {t_ol:.1f} s (busiest mailbox {worst[0]}: {worst[1]} requests) + T_sp {t_sp:.1f} s ({ru} RU at {RU_PER_MINUTE}/min) = {t_opt:.1f} s")
        print(f"  optimum / measured  {t_opt / total_s:.3f} (target >= 0.8)")
        print(f"  peak RSS            exchange {results['exchange'][1] / 1024:.0f} MiB, onedrive {results['onedrive'][1] / 1024:.0f} MiB (target < 300 MiB)")
        ok = lost == 0 and n429 < 0.01 * len(data) and max(r[1] for r in results.values()) < 300 * 1024
        print(f"  verdict             {'targets met' if ok and t_opt / total_s >= 0.8 else 'BELOW TARGET'}")
        if lost:
            sys.exit(1)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
