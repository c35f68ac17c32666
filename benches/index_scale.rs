//! Peak memory of a backup into a repository with millions of indexed blobs.
//!
//! `cargo bench --bench index_scale` (optional: `M365BK_SCALE_BLOBS`, default 10,000,000;
//! `M365BK_SCALE_INPUT_MIB`, default 200; the corpus from `$M365BK_TEST_CORPUS` or `corpus/`).
//!
//! 1. Makes an encrypted repository and writes real index files (the store's own encoder and
//!    sealing) listing `M365BK_SCALE_BLOBS` random blob ids in 500-blob packs, 20 packs per
//!    index file. The packs themselves are not written: a backup reads only the index.
//! 2. Runs this binary again as a child process that opens the repository, backs up the first
//!    `M365BK_SCALE_INPUT_MIB` MiB of the corpus (one content writer per file, four at a
//!    time, one snapshot) and prints its peak resident set (`VmHWM` from `/proc/self/status`)
//!    and throughput. The child runs twice: first with no local index cache (it is built from
//!    the index files), then again with the cache in place (the same content: all dedup hits).
//!
//! Prints measured numbers only; it asserts nothing.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use m365bk_store::{
    BenchBlob, BlobId, Encryption, InitOptions, Item, KdfParams, PackId, Repository, SecretString,
    SnapshotDraft,
};

const BLOBS_PER_PACK: usize = 500;
const PACKS_PER_INDEX: usize = 20;
const PASSPHRASE: &str = "index scale bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn corpus_files(limit_bytes: u64) -> Vec<PathBuf> {
    let files = common::corpus_files(|_| true);
    let mut total = 0;
    files
        .into_iter()
        .take_while(|f| {
            let fits = total < limit_bytes;
            total += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            fits
        })
        .collect()
}

/// xorshift64*: deterministic, fast, good enough to stand in for keyed hashes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn id(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for part in out.chunks_mut(8) {
            part.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

async fn generate(location: &str, blobs: usize) {
    let started = Instant::now();
    let repo = Repository::init(
        location,
        InitOptions {
            encryption: Encryption::Passphrase(SecretString::from(PASSPHRASE)),
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            cipher: Default::default(),
        },
    )
    .await
    .unwrap();
    let packs = blobs.div_ceil(BLOBS_PER_PACK);
    let files = packs.div_ceil(PACKS_PER_INDEX);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut left = blobs;
    let mut pending = Vec::new();
    for _ in 0..files {
        let mut file = Vec::with_capacity(PACKS_PER_INDEX);
        for _ in 0..PACKS_PER_INDEX {
            if left == 0 {
                break;
            }
            let n = left.min(BLOBS_PER_PACK);
            left -= n;
            let mut offset = 8u32;
            let entries: Vec<BenchBlob> = (0..n)
                .map(|_| {
                    let len = 20_000 + (rng.next() % 40_000) as u32;
                    let entry = (BlobId::from_bytes(rng.id()), offset, len);
                    offset += len;
                    entry
                })
                .collect();
            file.push((
                PackId::from_bytes(rng.id()),
                u64::from(offset) + 4096,
                entries,
            ));
        }
        let repo = repo.clone();
        pending.push(tokio::spawn(async move {
            repo.write_index_for_bench(file).await.unwrap()
        }));
        if pending.len() >= 4 {
            pending.remove(0).await.unwrap();
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    println!(
        "generated: {blobs} blobs in {packs} packs, {files} index files, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn child(location: &str, label: &str) {
    let input_mib = env_usize("M365BK_SCALE_INPUT_MIB", 200) as u64;
    let files = corpus_files(input_mib * 1024 * 1024);
    assert!(
        !files.is_empty(),
        "no corpus: build it with scripts/build-corpus.py"
    );
    let started = Instant::now();
    let repo = Repository::open(location, Some(SecretString::from(PASSPHRASE)))
        .await
        .unwrap();
    repo.set_index_cache_dir(std::env::var_os("M365BK_SCALE_CACHE").map(PathBuf::from));
    let backup = repo.begin_backup().await.unwrap();
    let opened = started.elapsed().as_secs_f64();
    let hwm_after_open = vm_hwm_kib();
    let backup = std::sync::Arc::new(backup);
    let files = std::sync::Arc::new(files);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (backup, files, next) = (backup.clone(), files.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut items = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(path) = files.get(i) else { break };
                let data = tokio::fs::read(path).await.unwrap();
                let mut w = backup.content_writer();
                w.write(&data).await.unwrap();
                let content = w.finish().await.unwrap();
                items.push(Item {
                    kind: "file".into(),
                    id: format!("{i}"),
                    parent_id: None,
                    path: path.display().to_string(),
                    change_key: None,
                    size: content.size,
                    modified: None,
                    metadata: serde_json::json!({}),
                    content: Some(content),
                });
            }
            items
        }));
    }
    let mut items = Vec::new();
    for w in workers {
        items.extend(w.await.unwrap());
    }
    let bytes: u64 = items.iter().map(|i| i.size).sum();
    backup
        .commit_snapshot(SnapshotDraft {
            service: "onedrive".into(),
            resource_id: "bench".into(),
            items,
            ..Default::default()
        })
        .await
        .unwrap();
    let stats = std::sync::Arc::into_inner(backup)
        .unwrap()
        .finish()
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let mib = bytes as f64 / 1048576.0;
    println!(
        "{label}: open + index load {opened:.1} s (peak RSS by then {:.0} MiB); backup of \
         {mib:.0} MiB ({} new blobs) {:.1} s = {:.0} MiB/s; {secs:.1} s in all; \
         peak RSS {:.0} MiB",
        hwm_after_open as f64 / 1024.0,
        stats.blobs_new,
        secs - opened,
        mib / (secs - opened),
        vm_hwm_kib() as f64 / 1024.0,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
        }
        rt.block_on(child(&args[pos + 1], &args[pos + 2]));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without `--bench`: skip the minute-long,
        // 1 GB measurement there.
        println!("index_scale: run it with `cargo bench --bench index_scale`");
        return;
    }
    let blobs = env_usize("M365BK_SCALE_BLOBS", 10_000_000);
    let work = tempfile::Builder::new()
        .prefix("m365bk-index-scale")
        .tempdir_in(
            std::env::var_os("M365BK_SCALE_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .unwrap();
    let location = work.path().join("repo");
    let location = location.to_str().unwrap().to_owned();
    rt.block_on(generate(&location, blobs));
    drop(rt);
    let exe = std::env::current_exe().unwrap();
    for label in [
        "first backup, no index cache",
        "second backup, cache in place",
    ] {
        let status = std::process::Command::new(&exe)
            .args(["--child", &location, label])
            .env("M365BK_SCALE_CACHE", work.path().join("cache"))
            .status()
            .unwrap();
        assert!(status.success(), "{label}: child failed: {status}");
    }
}
