#!/usr/bin/env python3
"""m365bk's storage core against restic on the same bytes (issue 3, "Speed").

    python3 benches/vs-restic.py [--cache DIR] [--size-mib N] [--jobs N] [--keep]

1. Builds (once, cached in DIR, default .cache/vs-restic) a deterministic M365-like corpus of
   about --size-mib MiB (default 1200): mail (real .eml files and generated messages: text
   bodies cut from real text files, base64 attachments), office documents (the real ones plus
   generated OOXML zips with deflated XML and stored media), PDFs (real), media (real images and
   seeded random "video"/"photo" files: incompressible), plus about 30 % of the bytes as exact
   copies of other files (the same attachment or shared document in several users' mailboxes
   and drives). A second-day variant changes about 2 % of the bytes: new messages, edited
   documents, new media, a few deletions; unchanged files are hard links to day 1's.
   Sources: corpus/ and .cache/corpus-sources/ (scripts/build-corpus.py builds both).
2. Installs restic from Debian when missing (apt-get install restic).
3. Runs, for each tool in turn on the same path: init, day-1 backup, day-2 backup (incremental:
   both tools skip files whose metadata is unchanged), full restore of day 2; measures wall
   time, peak RSS (wait4's ru_maxrss of the process) and the repository's size. Both
   repositories are encrypted; restic uses its defaults (compression auto); m365bk's side is
   the `store-dir` example (benches/tools/store_dir.rs): the store's public API, backing up 4
   files at once (the workers' default concurrency) and restoring pack by pack
   (`Repository::read_contents`, as restic's restorer works). m365bk then also restores item
   by item (`--by-file`, 4 at once, `Repository::read_content`: how the restore workers read),
   reported on its own line, outside the ratios.
4. Verifies each restore against day 2 (sha256 of every file), then prints a table and the
   ratios against the issue's targets, with each phase's CPU time (user + system).
5. Times `cp -r` of day 2 into the restore directory: what writing those files alone costs on
   this machine and file system (no decryption, decompression or verification), so a restore
   ratio can be read against it.

Wall times include each tool's key derivation (restic: scrypt; m365bk: Argon2id 64 MiB, 3
passes). The corpus is read from the page cache by both (it is read once before each run), and
before each timed phase dirty pages are written back and the script waits 6 s (`settle`).
"""

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS_VERSION = "vs-restic-corpus-1"
PASSWORD = "vs-restic benchmark passphrase"

MAIL_EXT = {".eml"}
TEXT_EXT = {".txt", ".rst", ".py", ".html", ".xml", ".md", ".pm", ".csv", ".json", ".decTest", ".cf"}
OFFICE_EXT = {".docx", ".pptx", ".xlsx", ".odt", ".odp", ".ods", ".xlsm", ".pptm"}
PDF_EXT = {".pdf"}
MEDIA_EXT = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tiff", ".bmp", ".wav", ".aiff"}

MIB = 1024 * 1024


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Corpus


def source_files():
    """Real files from corpus/ and .cache/corpus-sources/, by kind, deduplicated by content."""
    kinds = {"mail": [], "text": [], "office": [], "pdf": [], "media": []}
    seen = set()
    for base in [ROOT / "corpus", ROOT / ".cache" / "corpus-sources"]:
        if not base.is_dir():
            continue
        for dirpath, dirnames, files in os.walk(base):
            dirnames.sort()
            for f in sorted(files):
                p = Path(dirpath) / f
                if p.is_symlink() or not p.is_file():
                    continue
                ext = p.suffix.lower() if p.suffix.lower() != ".dectest" else ".decTest"
                kind = (
                    "mail" if ext in MAIL_EXT else
                    "text" if ext in TEXT_EXT else
                    "office" if ext in OFFICE_EXT else
                    "pdf" if ext in PDF_EXT else
                    "media" if ext in MEDIA_EXT else None
                )
                if kind is None:
                    continue
                size = p.stat().st_size
                if size == 0:
                    continue
                key = (size, hashlib.sha256(p.read_bytes()).hexdigest())
                if key in seen:
                    continue
                seen.add(key)
                kinds[kind].append(p)
    for k, v in kinds.items():
        if not v and k != "text":
            sys.exit(f"no {k} files under corpus/ or .cache/corpus-sources/: run scripts/build-corpus.py --out corpus first")
    return kinds


class Builder:
    def __init__(self, out: Path, seed: int, users: int):
        self.out = out
        self.rng = random.Random(seed)
        self.users = [f"user{u:02d}" for u in range(users)]
        self.files = []  # (relative path, size)
        self.bytes = 0
        self.text_pool = None

    def write(self, rel: str, data: bytes):
        p = self.out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.files.append((rel, len(data)))
        self.bytes += len(data)

    def text(self, n: int) -> str:
        pool = self.text_pool
        start = self.rng.randrange(0, max(1, len(pool) - n))
        return pool[start:start + n]

    def message(self, user: str, n: int, body_len: int, attachment: bytes = None, name="scan.bin") -> bytes:
        r = self.rng
        frm = self.rng.choice(self.users)
        head = (
            f"From: {frm} <{frm}@contoso.test>\r\nTo: {user} <{user}@contoso.test>\r\n"
            f"Subject: {self.text(40).splitlines()[0] if self.text_pool else 'message'} #{n}\r\n"
            f"Message-ID: <{r.getrandbits(64):016x}.{n}@contoso.test>\r\n"
            f"Date: Tue, {1 + n % 28} Mar 2026 {n % 24:02d}:{n % 60:02d}:00 +0000\r\nMIME-Version: 1.0\r\n"
        )
        body = self.text(body_len).replace("\n", "\r\n")
        if attachment is None:
            return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode("utf-8", "replace")
        b64 = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
        return (
            head + 'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
            "--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
            f'--=_b\r\nContent-Type: application/octet-stream; name="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + b64 + "--=_b--\r\n"
        ).encode("utf-8", "replace")

    def office_doc(self, media: list) -> bytes:
        """A generated OOXML-like zip: deflated XML text plus stored (already compressed) media."""
        import io
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            fixed = (2026, 3, 1, 12, 0, 0)
            def add(name, data, method):
                info = zipfile.ZipInfo(name, fixed)
                info.compress_type = method
                z.writestr(info, data)
            add("[Content_Types].xml", '<?xml version="1.0"?><Types/>', zipfile.ZIP_DEFLATED)
            paras = "".join(f"<w:p><w:r><w:t>{self.text(self.rng.randrange(200, 2000))}</w:t></w:r></w:p>"
                            for _ in range(self.rng.randrange(5, 60)))
            add("word/document.xml", f'<?xml version="1.0"?><w:document><w:body>{paras}</w:body></w:document>', zipfile.ZIP_DEFLATED)
            for i, m in enumerate(media):
                add(f"word/media/image{i + 1}.bin", m, zipfile.ZIP_STORED)
        return buf.getvalue()


def build_corpus(out: Path, size_mib: int):
    """Day 1 into out/day1, day 2 into out/day2; returns a summary dict."""
    stamp = out / "corpus.json"
    want = {"version": CORPUS_VERSION, "size_mib": size_mib}
    if stamp.exists():
        got = json.loads(stamp.read_text())
        if {k: got.get(k) for k in want} == want:
            return got
    if out.exists():
        shutil.rmtree(out)
    day1 = out / "day1"
    log(f"building a {size_mib} MiB corpus in {out} …")
    t0 = time.time()
    src = source_files()
    b = Builder(day1, seed=20260301, users=40)
    r = b.rng
    texts = []
    for p in src["text"][:3000]:
        texts.append(p.read_bytes().decode("utf-8", "replace"))
    for p in src["mail"]:
        # Mail bodies are good text too.
        texts.append(p.read_bytes().decode("utf-8", "replace")[:20000])
    b.text_pool = "\n".join(texts)
    if len(b.text_pool) < 1_000_000:
        b.text_pool = b.text_pool * (1_000_000 // max(1, len(b.text_pool)) + 1)

    total = size_mib * MIB
    unique_target = int(total * 0.70)
    shares = {"mail": 0.30, "office": 0.17, "pdf": 0.17, "media": 0.36}
    budgets = {k: int(unique_target * v) for k, v in shares.items()}
    unique = []  # relative paths of unique files, for duplicates later

    def user():
        return r.choice(b.users)

    # Mail: the real messages, then generated ones (text, a third with an attachment).
    n = 0
    spent = 0
    for p in src["mail"]:
        data = p.read_bytes()
        rel = f"{user()}/mail/Inbox/real-{n:05d}.eml"
        b.write(rel, data); unique.append(rel); spent += len(data); n += 1
    while spent < budgets["mail"]:
        att = None
        if r.random() < 0.33:
            kind = r.choice(["pdf", "office", "media", "random"])
            if kind == "random":
                att = r.randbytes(r.randrange(20_000, 600_000))
            else:
                att = r.choice(src[kind]).read_bytes()
                if len(att) > 3 * MIB:
                    att = att[: 3 * MIB]
        folder = r.choice(["Inbox", "Inbox/Projects", "Sent Items", "Archive", "Archive/2025"])
        data = b.message(user(), n, r.randrange(500, 30_000), att)
        rel = f"{user()}/mail/{folder}/{n:06d}.eml"
        b.write(rel, data); unique.append(rel); spent += len(data); n += 1

    # Office documents: the real ones, then generated ones.
    spent = 0
    for i, p in enumerate(src["office"]):
        data = p.read_bytes()
        rel = f"{user()}/drive/Documents/{i:04d}-{p.name}"
        b.write(rel, data); unique.append(rel); spent += len(data)
    i = 0
    while spent < budgets["office"]:
        media = [r.randbytes(r.randrange(10_000, 900_000)) for _ in range(r.randrange(0, 4))]
        data = b.office_doc(media)
        ext = r.choice([".docx", ".pptx", ".xlsx"])
        rel = f"{user()}/drive/Documents/Reports/gen-{i:05d}{ext}"
        b.write(rel, data); unique.append(rel); spent += len(data); i += 1

    # PDFs: the real ones (cycled with a different name only if the budget needs more: those
    # copies are counted as duplicates below, not as unique bytes).
    spent = 0
    for i, p in enumerate(src["pdf"]):
        if spent >= budgets["pdf"]:
            break
        data = p.read_bytes()
        rel = f"{user()}/drive/Documents/PDF/{i:04d}-{p.name}"
        b.write(rel, data); unique.append(rel); spent += len(data)

    # Media: the real images, then incompressible generated photos and videos.
    spent = 0
    for i, p in enumerate(src["media"]):
        data = p.read_bytes()
        rel = f"{user()}/drive/Pictures/{i:04d}-{p.name}"
        b.write(rel, data); unique.append(rel); spent += len(data)
    i = 0
    while spent < budgets["media"] + (unique_target - b.bytes if b.bytes < unique_target else 0):
        if r.random() < 0.8:
            data, rel = r.randbytes(r.randrange(500_000, 6 * MIB)), f"{user()}/drive/Pictures/IMG_{i:05d}.jpg"
        else:
            data, rel = r.randbytes(r.randrange(8 * MIB, 40 * MIB)), f"{user()}/drive/Videos/VID_{i:05d}.mp4"
        b.write(rel, data); unique.append(rel); spent += len(data); i += 1

    unique_bytes = b.bytes
    # Duplicates: exact copies into other users' mail and drives, about 30 % of the total.
    i = 0
    while b.bytes < total:
        rel = r.choice(unique)
        data = (day1 / rel).read_bytes()
        if len(data) > 16 * MIB:
            continue
        area = "mail/Inbox" if rel.endswith(".eml") else "drive/Shared"
        b.write(f"{user()}/{area}/copy-{i:05d}-{Path(rel).name}", data)
        i += 1
    dup_bytes = b.bytes - unique_bytes
    day1_files = list(b.files)

    # Day 2: hard links to day 1, then ~2 % of the bytes changed.
    day2 = out / "day2"
    for rel, _ in day1_files:
        (day2 / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(day1 / rel, day2 / rel)
    d2 = Builder(day2, seed=20260302, users=40)
    d2.text_pool = b.text_pool
    change_target = int(b.bytes * 0.02)
    changed = 0
    rr = d2.rng
    n2 = 0
    while changed < change_target * 0.5:  # new mail
        att = rr.randbytes(rr.randrange(20_000, 400_000)) if rr.random() < 0.3 else None
        data = d2.message(rr.choice(d2.users), 900_000 + n2, rr.randrange(500, 20_000), att)
        d2.write(f"{rr.choice(d2.users)}/mail/Inbox/day2-{n2:05d}.eml", data)
        changed += len(data); n2 += 1
    office = [rel for rel, _ in day1_files if "/Reports/gen-" in rel]
    while changed < change_target * 0.8:  # edited documents: same name, new content
        rel = rr.choice(office)
        (day2 / rel).unlink()
        media = [rr.randbytes(rr.randrange(10_000, 300_000)) for _ in range(rr.randrange(0, 2))]
        data = d2.office_doc(media)
        d2.write(rel, data)
        changed += len(data)
    k = 0
    while changed < change_target:  # new photos
        data = rr.randbytes(rr.randrange(300_000, 3 * MIB))
        d2.write(f"{rr.choice(d2.users)}/drive/Pictures/day2-{k:04d}.jpg", data)
        changed += len(data); k += 1
    deleted = 0
    for rel, _ in rr.sample(day1_files, 20):
        p = day2 / rel
        if p.exists():
            p.unlink(); deleted += 1

    summary = {
        **want,
        "day1_bytes": b.bytes,
        "day1_files": len(day1_files),
        "unique_bytes": unique_bytes,
        "duplicate_bytes": dup_bytes,
        "day2_changed_bytes": changed,
        "day2_new_files": len(d2.files),
        "day2_deleted_files": deleted,
        "build_seconds": round(time.time() - t0, 1),
    }
    stamp.write_text(json.dumps(summary, indent=1))
    log(f"corpus built in {summary['build_seconds']} s: {json.dumps(summary)}")
    return summary


# ---------------------------------------------------------------------------------------------
# Running and measuring


def run(cmd, env=None, cwd=None):
    """Runs cmd; returns (seconds, peak RSS in KiB, stdout) and sets run.cpu. Fails loudly."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage, so ru_maxrss is its peak RSS (KiB on Linux).
    out_chunks = []
    import threading
    err_chunks = []
    t_out = threading.Thread(target=lambda: out_chunks.append(p.stdout.read()))
    t_err = threading.Thread(target=lambda: err_chunks.append(p.stderr.read()))
    t_out.start(); t_err.start()
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.monotonic() - t0
    t_out.join(); t_err.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{err_chunks[0].decode(errors='replace')[-3000:]}")
    run.cpu = usage.ru_utime + usage.ru_stime  # CPU seconds of the last run (user + system)
    return secs, usage.ru_maxrss, out_chunks[0].decode(errors="replace")


def dir_bytes(p: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(p):
        for f in files:
            fp = os.path.join(dirpath, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def tree_digest(p: Path) -> dict:
    out = {}
    for dirpath, _, files in os.walk(p):
        for f in files:
            fp = Path(dirpath) / f
            h = hashlib.sha256()
            with open(fp, "rb") as fh:
                while True:
                    block = fh.read(4 * MIB)
                    if not block:
                        break
                    h.update(block)
            out[str(fp.relative_to(p))] = h.hexdigest()
    return out


def warm(p: Path):
    for dirpath, _, files in os.walk(p):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(8 * MIB):
                    pass


# Bytes of memory touched and freed right before each timed phase (`--prewarm-mib`).
PREWARM_MIB = 3072

PREWARM_CHILD = """
import mmap, sys
n = int(sys.argv[1]) * 1024 * 1024
m = mmap.mmap(-1, n)
for off in range(0, n, 4096):
    m[off] = 1
m.close()
"""


def settle():
    """Before each timed phase: writes back what earlier phases (of either tool) left dirty, so
    the kernel's writeback does not compete with the phase for the two cores, and waits out
    ext4's 5-second window in which it skips recently deleted inodes (300 s while their inode
    table block is still dirty, hence the sync) when it creates files. Then touches and frees
    PREWARM_MIB of memory (`prewarm`)."""
    os.sync()
    time.sleep(6)
    prewarm()


def prewarm():
    """Touches PREWARM_MIB of anonymous memory (at most a quarter of MemAvailable) in a child
    process and frees it, so the phase that follows gets memory the host has already backed.

    On a virtual machine whose balloon device reports free pages to the host (virtio-balloon
    free page reporting, as on the machines this was measured on), memory that has been free for
    a few seconds is handed back, and the next first touch of each page costs several
    microseconds (here `dd` of 3 GiB into a tmpfs took 4.5 s when the first 1.3 GiB were fast).
    Without this, each phase ran on whatever backed memory the phases before it had left free:
    the tool measured second (m365bk) took the cold pages, and its restore needed 4.2 s of CPU
    time against 1.5 s on backed memory. Freed pages go back to the head of the free lists, so
    the phase allocates these first, whichever tool it runs."""
    # At most a quarter of the memory available, so it never pushes the corpus out of the page
    # cache (`warm`) or the machine into swap.
    mib = min(PREWARM_MIB, mem_available_mib() // 4)
    if mib > 0:
        subprocess.run([sys.executable, "-c", PREWARM_CHILD, str(mib)], check=True)


def mem_available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def ensure_restic():
    exe = shutil.which("restic")
    if exe:
        return exe
    log("restic not found: installing it from Debian (apt-get install restic) …")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "restic"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("restic") or sys.exit("restic did not install")


def build_store_dir():
    log("building the store-dir example (cargo build --release --example store-dir) …")
    subprocess.run(["cargo", "build", "--release", "--example", "store-dir"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "store-dir"


def fs_type(path: Path) -> str:
    """The file system type of the mount holding `path` (from /proc/mounts), or "unknown"."""
    try:
        best = ("", "unknown")
        real = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and (real == fields[1] or real.startswith(fields[1].rstrip("/") + "/")):
                if len(fields[1]) > len(best[0]):
                    best = (fields[1], fields[2])
        return best[1]
    except OSError:
        return "unknown"


def measure(tool: str, corpus: Path, work: Path, restic: str, store_dir: Path, jobs: int,
            restore_dir: Path):
    """init, day 1, day 2, restore of day 2 with one tool. Returns {phase: (s, rss_kib)}, repo bytes."""
    live = work / "data"  # both days are backed up from this same path
    repo = work / f"{tool}-repo"
    restored = restore_dir / f"{tool}-restored"
    for p in [repo, restored]:
        if p.exists():
            shutil.rmtree(p)
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo),
           "RESTIC_CACHE_DIR": str(work / "restic-cache"), "M365BK_PASSPHRASE": PASSWORD}
    if tool == "restic":
        if (work / "restic-cache").exists():
            shutil.rmtree(work / "restic-cache")
        init = [restic, "init"]
        backup = [restic, "backup", "--quiet", "--host", "bench", str(live)]
        restore = [restic, "restore", "latest", "--host", "bench", "--target", str(restored)]
    else:
        init = [str(store_dir), "init", str(repo)]
        backup = [str(store_dir), "backup", str(repo), str(live), "--jobs", str(jobs)]
        restore = [str(store_dir), "restore", str(repo), str(restored)]
    res = {}
    run(init, env)
    sizes = {}
    for day in ["day1", "day2"]:
        os.rename(corpus / day, live)
        try:
            warm(live)
            settle()
            res[day] = (*run(backup, env)[:2], run.cpu)
        finally:
            os.rename(live, corpus / day)
        sizes[day] = dir_bytes(repo)
        log(f"  {tool} {day}: {res[day][0]:.1f} s ({run.cpu:.1f} s CPU), peak RSS {res[day][1] // 1024} MiB, repository {sizes[day] / MIB:.0f} MiB")
    settle()
    res["restore"] = (*run(restore, env)[:2], run.cpu)
    log(f"  {tool} restore: {res['restore'][0]:.1f} s ({run.cpu:.1f} s CPU), peak RSS {res['restore'][1] // 1024} MiB")
    # restic restores the absolute path below the target.
    root = restored / str(live).lstrip("/") if tool == "restic" else restored
    roots = [root]
    if tool == "m365bk":
        # Also item by item, as the restore workers read (not part of the ratios).
        by_file = restore_dir / f"{tool}-restored-by-file"
        if by_file.exists():
            shutil.rmtree(by_file)
        settle()
        res["restore_by_file"] = (*run([str(store_dir), "restore", str(repo), str(by_file), "--by-file",
                                        "--jobs", str(jobs)], env)[:2], run.cpu)
        log(f"  {tool} restore --by-file: {res['restore_by_file'][0]:.1f} s ({run.cpu:.1f} s CPU), "
            f"peak RSS {res['restore_by_file'][1] // 1024} MiB")
        roots.append(by_file)
    return res, sizes, roots


def main():
    global PREWARM_MIB
    ap = argparse.ArgumentParser(
        description="Backs up, incrementally backs up and restores the same M365-like corpus with "
        "m365bk's storage core and with restic, and prints the ratios (README: Benchmarks).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "vs-restic"),
                    help="where the corpus, the repositories and the last result are kept")
    ap.add_argument("--size-mib", type=int, default=1200, help="corpus size on day 1, in MiB")
    ap.add_argument("--jobs", type=int, default=4,
                    help="m365bk files backed up (and restored with --by-file) at once, as the workers do")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    ap.add_argument("--only", choices=["restic", "m365bk"], help="run one tool only")
    ap.add_argument("--restore-dir", help="restore into DIR (default: the work directory); "
                    "e.g. a tmpfs, to measure the tools rather than the file system's inode "
                    "allocation, which dominates both tools' restore on some ext4 set-ups")
    ap.add_argument("--prewarm-mib", type=int, default=PREWARM_MIB,
                    help="MiB of memory touched and freed right before each timed phase (at most a "
                    "quarter of what is available), so both tools get memory a virtual machine's host "
                    "has backed; 0 turns it off")
    ap.add_argument("--build-corpus-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    PREWARM_MIB = args.prewarm_mib

    cache = Path(args.cache)
    corpus = cache / "corpus"
    if args.build_corpus_only:
        build_corpus(corpus, args.size_mib)
        return
    # In a child process: a child's peak RSS (ru_maxrss) starts from this process's peak when
    # it is spawned, and building the corpus takes this one to some 350 MiB.
    subprocess.run([sys.executable, __file__, "--build-corpus-only", "--cache", str(cache),
                    "--size-mib", str(args.size_mib)], check=True)
    summary = build_corpus(corpus, args.size_mib)
    restic = ensure_restic()
    store_dir = build_store_dir()
    restic_version = subprocess.run([restic, "version"], capture_output=True, text=True).stdout.strip()
    work = cache / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    day2_digest = tree_digest(corpus / "day2")

    restore_dir = Path(args.restore_dir) if args.restore_dir else work
    restore_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    results = {}
    for tool in ["restic", "m365bk"]:
        if args.only and tool != args.only:
            continue
        log(f"{tool}:")
        res, sizes, roots = measure(tool, corpus, work, restic, store_dir, args.jobs, restore_dir)
        for root in roots:
            got = tree_digest(root)
            if got != day2_digest:
                missing = set(day2_digest) - set(got)
                wrong = [k for k in day2_digest if k in got and got[k] != day2_digest[k]]
                sys.exit(f"{tool} restore into {root} differs from day 2: {len(missing)} missing, "
                         f"{len(wrong)} different")
            log(f"  {tool} restore into {root.name} verified: {len(got)} files equal day 2 (sha256)")
        results[tool] = {"res": res, "sizes": sizes}
    floor = floor_cpu = None
    if not args.only:
        # What writing day 2's files alone costs here: `cp -r` from the page cache into the
        # restore directory (one process, no decryption, decompression or verification). A
        # restore cannot be much faster than this, whatever the tool.
        target = restore_dir / "cp-floor"
        if target.exists():
            shutil.rmtree(target)
        warm(corpus / "day2")
        settle()
        floor = run(["cp", "-r", str(corpus / "day2"), str(target)])[0]
        floor_cpu = run.cpu
        log(f"cp -r of day 2 into {restore_dir}: {floor:.1f} s ({floor_cpu:.1f} s CPU)")
    load_after = os.getloadavg()
    # Deleted only now: ext4 searches past recently deleted inodes when it creates files, which
    # would slow down whichever restore came next.
    if not args.keep:
        for tool in results:
            shutil.rmtree(restore_dir / f"{tool}-restored")
            if (restore_dir / f"{tool}-restored-by-file").exists():
                shutil.rmtree(restore_dir / f"{tool}-restored-by-file")
        if floor is not None:
            shutil.rmtree(restore_dir / "cp-floor")
        os.sync()

    d1 = summary["day1_bytes"]
    d2 = dir_bytes(corpus / "day2")
    def mbps(nbytes, secs):
        return nbytes / MIB / secs
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.machine()}, "
          f"{os.cpu_count()} cores ({cpu_model()}), {mem_gib():.0f} GiB RAM; load average before/after: "
          f"{load_before[0]:.2f}/{load_after[0]:.2f}")
    print(f"corpus: day 1 {d1 / MIB:.0f} MiB in {summary['day1_files']} files "
          f"({summary['duplicate_bytes'] / d1:.0%} exact duplicates); day 2 changes "
          f"{summary['day2_changed_bytes'] / MIB:.1f} MiB ({summary['day2_changed_bytes'] / d1:.1%}), "
          f"{summary['day2_deleted_files']} files deleted; {restic_version}")
    print(f"restores written to: {restore_dir} ({fs_type(restore_dir)}); memory touched and freed "
          f"before each timed phase: {PREWARM_MIB} MiB")
    print()
    hdr = f"| {'':24} | {'restic':>16} | {'m365bk':>16} | {'ratio':>8} | {'target':>8} | |"
    print(hdr)
    print("|" + "|".join(["-" * 26, "-" * 18, "-" * 18, "-" * 10, "-" * 10, "---"]) + "|")
    rows = []
    if "restic" in results and "m365bk" in results:
        R, M = results["restic"], results["m365bk"]
        def row(name, rv, mv, unit, ratio, target, higher_better):
            ok = ratio >= target if higher_better else ratio <= target
            sign = "≥" if higher_better else "≤"
            print(f"| {name:24} | {rv:>12.1f} {unit:3} | {mv:>12.1f} {unit:3} | {ratio:>7.2f}× | {sign} {target:.1f}× | {'met' if ok else 'MISSED'} |")
            rows.append({"name": name, "restic": rv, "m365bk": mv, "ratio": ratio, "target": target, "met": ok})
        for name, key, nbytes in [("initial backup (MiB/s)", "day1", d1), ("incremental (MiB/s)", "day2", d2),
                                  ("full restore (MiB/s)", "restore", d2)]:
            rv, mv = mbps(nbytes, R["res"][key][0]), mbps(nbytes, M["res"][key][0])
            target = {"day1": 3.0, "day2": 2.0, "restore": 3.0}[key]
            row(name, rv, mv, "", mv / rv, target, True)
        for name, key in [("initial backup (s)", "day1"), ("incremental (s)", "day2"), ("full restore (s)", "restore")]:
            rv, mv = R["res"][key][0], M["res"][key][0]
            print(f"| {name:24} | {rv:>12.1f} s   | {mv:>12.1f} s   | {'':8} | {'':8} | |")
        for name, key in [("initial backup (CPU s)", "day1"), ("incremental (CPU s)", "day2"), ("full restore (CPU s)", "restore")]:
            rv, mv = R["res"][key][2], M["res"][key][2]
            print(f"| {name:24} | {rv:>12.1f} s   | {mv:>12.1f} s   | {'':8} | {'':8} | |")
        rs, ms = R["sizes"]["day2"] / MIB, M["sizes"]["day2"] / MIB
        row("repository (MiB)", rs, ms, "", ms / rs, 1.0, False)
        rr = max(v[1] for v in R["res"].values()) / 1024
        mr = max(v[1] for v in M["res"].values()) / 1024
        row("peak RSS, any phase (MiB)", rr, mr, "", mr / rr, 1.0, False)
        for key in ["day1", "day2", "restore"]:
            print(f"| {'peak RSS ' + key + ' (MiB)':24} | {R['res'][key][1] / 1024:>12.0f}     | {M['res'][key][1] / 1024:>12.0f}     | {'':8} | {'':8} | |")
        if "restore_by_file" in M["res"]:
            bf = M["res"]["restore_by_file"]
            print()
            print(f"m365bk restore file by file (`store-dir restore --by-file`, {args.jobs} files at once, as the "
                  f"restore workers read items): {bf[0]:.1f} s ({bf[2]:.1f} s CPU), peak RSS {bf[1] / 1024:.0f} MiB; "
                  f"{R['res']['restore'][0] / bf[0]:.2f}× restic's restore")
        if floor is not None:
            print()
            print(f"cp -r of day 2 into the restore directory: {floor:.1f} s ({floor_cpu:.1f} s CPU); "
                  f"restore time over it: restic {R['res']['restore'][0] / floor:.2f}×, "
                  f"m365bk {M['res']['restore'][0] / floor:.2f}×")
    else:
        for tool, r in results.items():
            print(tool, json.dumps(r))
    (cache / "last-result.json").write_text(json.dumps({"summary": summary, "results": results, "rows": rows,
                                                        "prewarm_mib": PREWARM_MIB,
                                                        "cp_floor_seconds": floor,
                                                        "cp_floor_cpu_seconds": floor_cpu}, indent=1))


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
