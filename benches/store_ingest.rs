//! Criterion benchmark of the storage core's ingest path: FastCDC chunking, keyed BLAKE3,
//! zstd (skipped for incompressible chunks), XChaCha20-Poly1305 and pack writes to a local
//! repository, reported in bytes/s.
//!
//! `cargo bench --bench store_ingest`. Inputs: 32 MiB of incompressible bytes (a seeded
//! xorshift stream, like media and office zips) and, when the test corpus is built
//! (`scripts/build-corpus.py --out corpus`, or `$M365BK_TEST_CORPUS`), the first 32 MiB of its
//! real mail and files. Each iteration writes into a fresh repository, so nothing dedups
//! against an earlier iteration.

#[path = "common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use m365bk_store::{Encryption, InitOptions, KdfParams, Repository, SecretString};

const INPUT_BYTES: usize = 32 * 1024 * 1024;

fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn corpus_bytes(len: usize) -> Option<Vec<u8>> {
    let files = common::corpus_files(|_| true);
    let mut out = Vec::with_capacity(len);
    for f in files {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(&std::fs::read(f).ok()?);
    }
    if out.is_empty() {
        return None;
    }
    out.truncate(len);
    Some(out)
}

fn ingest(rt: &tokio::runtime::Runtime, data: &[u8], encrypted: bool) {
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("repo");
        let opts = if encrypted {
            InitOptions {
                encryption: Encryption::Passphrase(SecretString::from("bench passphrase")),
                // Key derivation is paid once per command, not per byte: keep it out of the
                // measurement.
                kdf: KdfParams {
                    memory_kib: 64,
                    iterations: 1,
                    parallelism: 1,
                },
                cipher: Default::default(),
            }
        } else {
            InitOptions {
                encryption: Encryption::None,
                kdf: KdfParams::RECOMMENDED,
                cipher: Default::default(),
            }
        };
        let repo = Repository::init(loc.to_str().unwrap(), opts).await.unwrap();
        let writer = repo.begin_backup().await.unwrap();
        let mut cw = writer.content_writer();
        for slice in data.chunks(1024 * 1024) {
            cw.write(slice).await.unwrap();
        }
        cw.finish().await.unwrap();
        writer.finish().await.unwrap();
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut inputs = vec![("incompressible", incompressible(INPUT_BYTES))];
    if let Some(real) = corpus_bytes(INPUT_BYTES) {
        inputs.push(("corpus", real));
    }
    let mut group = c.benchmark_group("store_ingest");
    group.sample_size(10);
    for (name, data) in &inputs {
        group.throughput(Throughput::Bytes(data.len() as u64));
        for encrypted in [false, true] {
            let id = BenchmarkId::new(*name, if encrypted { "encrypted" } else { "plaintext" });
            group.bench_with_input(id, data, |b, data| b.iter(|| ingest(&rt, data, encrypted)));
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
