//! Criterion benchmarks of each stage of the storage core's ingest path, in bytes/s:
//! FastCDC v2020 chunking, keyed BLAKE3, zstd (a new repository's level on text, and the incompressibility
//! sample test that lets media skip the full attempt), sealing with XAES-256-GCM and
//! XChaCha20-Poly1305. The whole
//! path is `benches/store_ingest.rs`.
//!
//! `cargo bench --bench store_stages`. Inputs, 8 MiB each: incompressible bytes (a seeded
//! xorshift stream, like media and office zips) and text (real mail from the test corpus when it
//! is built, `$M365BK_TEST_CORPUS` or `corpus/`; else generated words).

#[path = "common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use m365bk_store::bench_api::{blob_id, sample_compresses, Chunker, Encoder};
use m365bk_store::Cipher;

const INPUT_BYTES: usize = 8 * 1024 * 1024;

fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Real mail (`.eml`) from the test corpus, or generated words if it is not built.
fn text(len: usize) -> Vec<u8> {
    let files = common::corpus_files(|p| p.extension().is_some_and(|e| e == "eml"));
    let mut out = Vec::with_capacity(len);
    for f in files {
        if out.len() >= len {
            break;
        }
        if let Ok(b) = std::fs::read(f) {
            out.extend_from_slice(&b);
        }
    }
    if out.is_empty() {
        let words = [
            "report ",
            "meeting ",
            "budget ",
            "Contoso ",
            "review ",
            "draft\r\n",
        ];
        let mut x: u64 = 7;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % 6) as usize].as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn bench(c: &mut Criterion) {
    let inputs = [
        ("incompressible", incompressible(INPUT_BYTES)),
        ("text", text(INPUT_BYTES)),
    ];
    let chunker = Chunker::new(0x5eed);
    let key = [7u8; 32];

    let mut group = c.benchmark_group("chunk");
    for (name, data) in &inputs {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("fastcdc-v2020", name), data, |b, d| {
            b.iter(|| chunker.cut_all(d))
        });
    }
    group.finish();

    // Hashing runs per chunk: hash the chunks the chunker cuts.
    let mut group = c.benchmark_group("hash");
    let data = &inputs[0].1;
    let cuts = chunker.cut_all(data);
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("blake3-keyed/chunks", |b| {
        b.iter(|| {
            let mut pos = 0;
            for &len in &cuts {
                std::hint::black_box(blob_id(&key, &data[pos..pos + len]));
                pos += len;
            }
        })
    });
    group.finish();

    // Encoding per 256 KiB chunk (the average chunk size).
    let mut group = c.benchmark_group("encode");
    const CHUNK: usize = 256 * 1024;
    for (name, data) in &inputs {
        group.throughput(Throughput::Bytes(data.len() as u64));
        for (label, cipher) in [
            ("plaintext", None),
            ("xaes-256-gcm", Some(Cipher::Xaes256Gcm)),
            ("xchacha20-poly1305", Some(Cipher::XChaCha20Poly1305)),
        ] {
            let enc = Encoder::new(Encoder::DEFAULT_LEVEL, cipher);
            group.bench_with_input(
                BenchmarkId::new(format!("zstd-{}-{label}", Encoder::DEFAULT_LEVEL), name),
                data,
                |b, d| {
                    b.iter(|| {
                        for chunk in d.chunks(CHUNK) {
                            std::hint::black_box(enc.encode(chunk));
                        }
                    })
                },
            );
        }
    }
    // The sample test alone: what an incompressible chunk costs before it is stored raw.
    for (name, data) in &inputs {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("sample-test", name), data, |b, d| {
            b.iter(|| {
                for chunk in d.chunks(CHUNK) {
                    std::hint::black_box(sample_compresses(chunk));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
