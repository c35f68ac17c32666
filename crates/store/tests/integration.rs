//! Integration tests for m365bk-store: real LocalFileSystem repositories in temp directories,
//! a real SQLite file.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use m365bk_store::{
    BackupWriter, Catalog, CheckOptions, Cipher, ContentRef, Encryption, Error, InitOptions, Item,
    JobRun, KdfParams, Repository, SecretString, Snapshot, SnapshotDraft,
};
use rand::{RngCore, SeedableRng};

const MIB: usize = 1024 * 1024;

const PASSPHRASE: &str = "correct horse battery staple";

/// Cheap Argon2id parameters, explicitly for tests (production: `KdfParams::RECOMMENDED`).
const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

fn pass() -> SecretString {
    SecretString::from(PASSPHRASE)
}

/// An encrypted repository, as `m365bk init` makes by default (with cheap key derivation).
fn opts() -> InitOptions {
    InitOptions {
        encryption: Encryption::Passphrase(pass()),
        kdf: TEST_KDF,
        cipher: Default::default(),
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

fn loc(dir: &Path) -> String {
    dir.to_str().expect("utf-8 temp path").to_owned()
}

async fn store(backup: &BackupWriter, data: &[u8], write_sizes: &[usize]) -> ContentRef {
    let mut writer = backup.content_writer();
    let mut rest = data;
    let mut sizes = write_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        writer.write(&rest[..n]).await.unwrap();
        rest = &rest[n..];
    }
    writer.finish().await.unwrap()
}

async fn read_all(repo: &Repository, content: &ContentRef) -> m365bk_store::Result<Vec<u8>> {
    let parts: Vec<bytes::Bytes> = repo.read_content(content).try_collect().await?;
    Ok(parts.concat())
}

fn item(path: &str, content: Option<ContentRef>) -> Item {
    Item {
        kind: "message".to_owned(),
        id: format!("id-{path}"),
        parent_id: Some("folder-1".to_owned()),
        path: path.to_owned(),
        change_key: Some("ck1".to_owned()),
        size: content.as_ref().map_or(0, |c| c.size),
        modified: Some("2026-11-29T10:00:00Z".parse().unwrap()),
        metadata: serde_json::json!({"subject": path, "from": "adele@contoso.com"}),
        content,
    }
}

fn draft(resource: &str, items: Vec<Item>) -> SnapshotDraft {
    SnapshotDraft {
        service: "exchange".to_owned(),
        resource_id: resource.to_owned(),
        resource_name: format!("{resource}@contoso.com"),
        job_id: "nightly-mail".to_owned(),
        tags: vec!["test".to_owned()],
        selection: Vec::new(),
        parent: None,
        items,
        state: serde_json::json!({"deltaLinks": {"inbox": "https://graph/delta?token=1"}}),
        skipped: vec![],
    }
}

fn pack_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir.join("data")) else {
        return out;
    };
    for sub in subdirs {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if !p.to_string_lossy().contains('#') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    /// Segments of random or repetitive bytes, so both compressed and raw blobs occur.
    fn build(segments: &[(u8, usize, bool)], seed: u64) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, &(byte, len, random)) in segments.iter().enumerate() {
            if random {
                data.extend(random_bytes(len, seed ^ i as u64));
            } else {
                data.extend(std::iter::repeat_n(byte, len));
            }
        }
        data
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Any bytes, split into any writes, read back the same; the chunking does not depend
        /// on the split.
        #[test]
        fn any_stream_round_trips_independent_of_write_sizes(
            segments in prop::collection::vec((any::<u8>(), 1usize..1_500_000, any::<bool>()), 0..6),
            seed in any::<u64>(),
            sizes_a in prop::collection::vec(1usize..3_000_000, 1..8),
            sizes_b in prop::collection::vec(1usize..70_000, 1..8),
        ) {
            let data = build(&segments, seed);
            let rt = runtime();
            let dir = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
                let backup = repo.begin_backup().await.unwrap();
                let a = store(&backup, &data, &sizes_a).await;
                let b = store(&backup, &data, &sizes_b).await;
                prop_assert_eq!(a.size, data.len() as u64);
                prop_assert_eq!(&a, &b);
                let stats = backup.stats();
                prop_assert_eq!(stats.bytes_in, 2 * data.len() as u64);
                prop_assert_eq!(stats.blobs_in, 2 * a.blobs.len() as u64);
                prop_assert!(stats.bytes_new <= data.len() as u64);
                backup.commit_snapshot(draft("u1", vec![item("x", Some(a.clone()))])).await.unwrap();
                backup.finish().await.unwrap();
                let repo = Repository::open(&loc(dir.path()), Some(pass())).await.unwrap();
                let back = read_all(&repo, &a).await.unwrap();
                prop_assert!(back == data, "content differs: {} vs {} bytes", back.len(), data.len());
                Ok(())
            })?;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_bytes_same_ids_in_one_repository_different_in_another() {
        let data = random_bytes(3 * MIB, 11);
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let repo_a = Repository::init(&loc(dir_a.path()), opts()).await.unwrap();
        let repo_b = Repository::init(&loc(dir_b.path()), opts()).await.unwrap();
        assert_ne!(repo_a.id(), repo_b.id());

        let first = {
            let backup = repo_a.begin_backup().await.unwrap();
            let c = store(&backup, &data, &[100_000]).await;
            backup.finish().await.unwrap();
            c
        };
        let second = {
            let backup = Repository::open(&loc(dir_a.path()), Some(pass()))
                .await
                .unwrap()
                .begin_backup()
                .await
                .unwrap();
            let c = store(&backup, &data, &[MIB]).await;
            let stats = backup.finish().await.unwrap();
            assert_eq!(
                stats.blobs_new, 0,
                "everything is already in the repository"
            );
            assert_eq!(stats.packs_written, 0);
            c
        };
        assert_eq!(first, second);
        assert!(first.blobs.len() >= 2, "3 MiB should be several chunks");

        let other = {
            let backup = repo_b.begin_backup().await.unwrap();
            let c = store(&backup, &data, &[MIB]).await;
            backup.finish().await.unwrap();
            c
        };
        assert_eq!(other.size, first.size);
        for id in &other.blobs {
            assert!(
                !first.blobs.contains(id),
                "blob id {id} shared across repositories"
            );
        }
        assert_eq!(read_all(&repo_b, &other).await.unwrap(), data);
    }

    #[tokio::test]
    async fn empty_and_tiny_content() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let empty = backup.content_writer().finish().await.unwrap();
        assert_eq!(
            empty,
            ContentRef {
                size: 0,
                blobs: vec![]
            }
        );
        let tiny = store(&backup, b"x", &[1]).await;
        assert_eq!(tiny.blobs.len(), 1);
        backup.finish().await.unwrap();
        assert_eq!(read_all(&repo, &empty).await.unwrap(), b"");
        assert_eq!(read_all(&repo, &tiny).await.unwrap(), b"x");
    }

    /// A reader that returns at most `piece` bytes per call and fails once it has returned
    /// `fail_after` bytes (if set).
    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
        fail_after: Option<usize>,
    }

    impl std::io::Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.fail_after.is_some_and(|n| self.pos >= n) {
                return Err(std::io::Error::other("source went away"));
            }
            let end = (self.pos + self.piece.min(out.len())).min(self.data.len());
            let n = end - self.pos;
            out[..n].copy_from_slice(&self.data[self.pos..end]);
            self.pos = end;
            Ok(n)
        }
    }

    /// A reader that sleeps, then returns its end.
    struct Slow(std::time::Duration);

    impl std::io::Read for Slow {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.0);
            Ok(0)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_from_a_reader_stores_what_write_stores_and_reports_read_errors() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        // Larger than two writer buffers (4 MiB each), so the reads cross buffer boundaries.
        let data = random_bytes(9 * MIB + 12_345, 21);
        let written = store(&backup, &data, &[100_000]).await;
        let mut stored = Vec::new();
        for (len, piece) in [
            (data.len(), 77_777),
            (data.len(), usize::MAX),
            (1000, 10),
            (0, 1),
        ] {
            let mut writer = backup.content_writer();
            let reader = Pieces {
                data: data[..len].to_vec(),
                pos: 0,
                piece,
                fail_after: None,
            };
            let read = writer.write_from(reader).await.unwrap().unwrap();
            assert_eq!(read, len as u64);
            let content = writer.finish().await.unwrap();
            assert_eq!(content.size, len as u64);
            if len == data.len() {
                assert_eq!(
                    content, written,
                    "same bytes, same blobs (pieces of {piece})"
                );
            }
            stored.push((len, content));
        }
        // A failing source: the store is fine (outer Ok), the read error comes back as is.
        // The first refill (4 MiB) read fine, the second failed after 1 MiB: the writer
        // holds, and counts, exactly the first 4 MiB.
        let mut writer = backup.content_writer();
        let reader = Pieces {
            data: data.clone(),
            pos: 0,
            piece: 1 << 20,
            fail_after: Some(5 << 20),
        };
        let err = writer.write_from(reader).await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "source went away");
        let partial = writer.finish().await.unwrap();
        assert_eq!(partial.size, 4 << 20);
        stored.push((4 << 20, partial));

        // A write whose future is dropped mid-read (a timeout) leaves the writer refusing to
        // go on, instead of finishing content that lacks the bytes the read held.
        let mut writer = backup.content_writer();
        writer.write(&data[..100_000]).await.unwrap();
        let slow = Slow(std::time::Duration::from_millis(300));
        let cancelled = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            writer.write_from(slow),
        )
        .await;
        assert!(cancelled.is_err(), "the read should still be running");
        let err = writer.finish().await.unwrap_err().to_string();
        assert!(err.contains("cancelled before it completed"), "{err}");
        backup.finish().await.unwrap();
        for (len, content) in stored {
            assert_eq!(read_all(&repo, &content).await.unwrap(), &data[..len]);
        }
    }
}

/// `Repository::read_contents`: many contents at once, read pack by pack.
mod read_many {
    use super::*;
    use m365bk_store::{BlobId, ContentPiece};
    use proptest::prelude::*;

    /// Each content rebuilt from its pieces; panics if a content's pieces overlap or leave a
    /// gap.
    fn reassemble(contents: usize, pieces: Vec<ContentPiece>) -> Vec<Vec<u8>> {
        let mut by_content: Vec<Vec<(u64, bytes::Bytes)>> = vec![Vec::new(); contents];
        for p in pieces {
            by_content[p.content].push((p.offset, p.data));
        }
        by_content
            .into_iter()
            .enumerate()
            .map(|(c, mut pieces)| {
                pieces.sort_by_key(|(offset, _)| *offset);
                let mut out = Vec::new();
                for (offset, data) in pieces {
                    assert_eq!(offset, out.len() as u64, "content {c}: a gap or an overlap");
                    out.extend_from_slice(&data);
                }
                out
            })
            .collect()
    }

    /// A repository of two packs (two backup sessions) holding large random blobs, large
    /// compressible ones, and runs of small blobs side by side (so a selection of them leaves
    /// gaps a read spans). Returns every distinct blob with its plaintext.
    async fn blob_pool(dir: &Path) -> (Repository, Vec<(BlobId, Vec<u8>)>) {
        let repo = Repository::init(&loc(dir), opts()).await.unwrap();
        let mut contents = Vec::new();
        for session in 0..2u64 {
            let backup = repo.begin_backup().await.unwrap();
            let mut compressible = Vec::new();
            while compressible.len() < 2 * MIB {
                compressible.extend_from_slice(
                    format!("line {} of a mail body\n", compressible.len()).as_bytes(),
                );
            }
            contents.push(store(&backup, &random_bytes(2 * MIB, 40 + session), &[MIB]).await);
            contents.push(store(&backup, &compressible, &[MIB]).await);
            for small in 0..6 {
                let len = 3_000 + small * 4_000;
                contents.push(
                    store(
                        &backup,
                        &random_bytes(len as usize, 50 + small + 10 * session),
                        &[len as usize],
                    )
                    .await,
                );
            }
            backup.finish().await.unwrap();
        }
        assert!(
            pack_files(dir).len() >= 2,
            "two sessions, two packs at least"
        );
        let mut pool: Vec<(BlobId, Vec<u8>)> = Vec::new();
        for content in &contents {
            for id in &content.blobs {
                if pool.iter().any(|(known, _)| known == id) {
                    continue;
                }
                let one = ContentRef {
                    size: 0,
                    blobs: vec![*id],
                };
                pool.push((*id, read_all(&repo, &one).await.unwrap()));
            }
        }
        (repo, pool)
    }

    /// Any selection of blobs, repeated within and across contents, in any order, with empty
    /// contents among them: each content comes back whole, from pieces that cover it once.
    #[test]
    fn any_contents_come_back_whole_from_their_pieces() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (repo, pool) = rt.block_on(blob_pool(dir.path()));
        assert!(pool.len() >= 20, "{} blobs", pool.len());
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
        let strategy = prop::collection::vec(
            prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            0..8,
        );
        runner
            .run(&strategy, |picks| {
                let contents: Vec<ContentRef> = picks
                    .iter()
                    .map(|p| {
                        let blobs: Vec<BlobId> =
                            p.iter().map(|i| pool[i.index(pool.len())].0).collect();
                        let size = p
                            .iter()
                            .map(|i| pool[i.index(pool.len())].1.len() as u64)
                            .sum();
                        ContentRef { size, blobs }
                    })
                    .collect();
                let expected: Vec<Vec<u8>> = picks
                    .iter()
                    .map(|p| {
                        p.iter()
                            .flat_map(|i| pool[i.index(pool.len())].1.clone())
                            .collect()
                    })
                    .collect();
                let pieces: Vec<ContentPiece> = rt
                    .block_on(repo.read_contents(&contents).try_collect())
                    .unwrap();
                let uses: usize = contents.iter().map(|c| c.blobs.len()).sum();
                prop_assert_eq!(pieces.len(), uses, "one piece per use of a blob");
                let back = reassemble(contents.len(), pieces);
                for (c, (got, want)) in back.iter().zip(&expected).enumerate() {
                    prop_assert!(
                        got == want,
                        "content {} differs: {} vs {} bytes",
                        c,
                        got.len(),
                        want.len()
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_to_read_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let none: Vec<ContentPiece> = repo.read_contents(&[]).try_collect().await.unwrap();
        assert!(none.is_empty());
        let empty: Vec<ContentPiece> = repo
            .read_contents(&[ContentRef::default(), ContentRef::default()])
            .try_collect()
            .await
            .unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_not_in_the_index_is_named_before_any_piece() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, pool) = blob_pool(dir.path()).await;
        let unknown: BlobId = "ab".repeat(32).parse().unwrap();
        let contents = [
            ContentRef {
                size: 0,
                blobs: vec![pool[0].0],
            },
            ContentRef {
                size: 0,
                blobs: vec![unknown],
            },
        ];
        let mut stream = std::pin::pin!(repo.read_contents(&contents));
        let first = stream.try_next().await.unwrap_err();
        assert!(
            matches!(first, Error::BlobNotIndexed { id } if id == unknown),
            "{first}"
        );
        assert!(
            stream.try_next().await.unwrap().is_none(),
            "the stream ends at the error"
        );
    }

    async fn first_error(repo: &Repository, contents: &[ContentRef]) -> Error {
        repo.read_contents(contents)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_or_damaged_pack_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, pool) = blob_pool(dir.path()).await;
        let all = [ContentRef {
            size: 0,
            blobs: pool.iter().map(|(id, _)| *id).collect(),
        }];
        let packs = pack_files(dir.path());

        // A flipped byte inside the first pack's first blob (after the 8-byte header).
        let original = std::fs::read(&packs[0]).unwrap();
        let mut flipped = original.clone();
        flipped[8 + 100] ^= 0x01;
        std::fs::write(&packs[0], &flipped).unwrap();
        let err = first_error(&repo, &all).await;
        assert!(
            matches!(err, Error::CorruptObject { kind: "pack", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&file_name(&packs[0])), "{err}");
        assert!(err.to_string().contains("fails authentication"), "{err}");

        // The same pack gone. The stream ends at the error, even for a caller that goes on
        // polling (the reads behind it are not handed out).
        std::fs::remove_file(&packs[0]).unwrap();
        let everything: Vec<_> = futures::StreamExt::collect(repo.read_contents(&all)).await;
        let first_err = everything.iter().position(|i| i.is_err()).unwrap();
        assert_eq!(first_err, everything.len() - 1, "nothing after the error");
        let err = first_error(&repo, &all).await;
        assert!(
            matches!(err, Error::MissingObject { kind: "pack", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&file_name(&packs[0])), "{err}");

        // Put back, everything reads again: nothing else was touched.
        std::fs::write(&packs[0], &original).unwrap();
        let pieces = repo
            .read_contents(&all)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        let want: Vec<u8> = pool.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(reassemble(1, pieces)[0], want);
    }
}

mod dedup {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_five_mib_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let data = random_bytes(5 * MIB, 5);
        let backup = repo.begin_backup().await.unwrap();
        let a = store(&backup, &data, &[64 * 1024]).await;
        let b = store(&backup, &data, &[3 * MIB]).await;
        assert_eq!(a, b);
        let stats = backup.finish().await.unwrap();
        assert_eq!(stats.bytes_in, 10 * MIB as u64);
        assert_eq!(stats.blobs_in, 2 * a.blobs.len() as u64);
        assert_eq!(stats.blobs_new, a.blobs.len() as u64);
        assert_eq!(stats.bytes_new, 5 * MIB as u64);
        assert_eq!(stats.packs_written, 1);

        let repo_stats = repo.stats().await.unwrap();
        assert_eq!(repo_stats.pack_count, 1);
        assert_eq!(repo_stats.pack_bytes, stats.bytes_stored);
        // Random data is stored raw: 5 MiB plus header and a small trailer, once.
        assert!(repo_stats.pack_bytes > 5 * MIB as u64);
        assert!(
            repo_stats.pack_bytes < 5 * MIB as u64 + 4096,
            "{}",
            repo_stats.pack_bytes
        );
        assert_eq!(repo_stats.blob_count, a.blobs.len() as u64);
        assert_eq!(repo_stats.index_count, 1);
        assert_eq!(repo_stats.snapshot_count, 0);
    }

    /// Compression runs in the background after a writer has its chunk ids: a commit made the
    /// moment the writers finish must still cover every chunk (a fresh handle reads all of it
    /// back before the session ends, and `check --read-data` is clean), and content written by
    /// several writers at once is stored once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_right_after_concurrent_writers_covers_every_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let shared = random_bytes(3 * MIB, 900);
        // Compressible and incompressible content, each writer also writing the shared bytes.
        let contents: Vec<Vec<u8>> = (0..12u64)
            .map(|i| {
                let mut data = if i % 2 == 0 {
                    random_bytes(5 * MIB + i as usize * 1000, 901 + i)
                } else {
                    format!("line {i} of a mail body that compresses well\n")
                        .repeat(120_000)
                        .into_bytes()
                };
                data.extend_from_slice(&shared);
                data
            })
            .collect();
        let backup = std::sync::Arc::new(repo.begin_backup().await.unwrap());
        let refs: Vec<ContentRef> = futures::future::join_all(contents.iter().map(|data| {
            let backup = backup.clone();
            let data = data.clone();
            async move {
                tokio::spawn(async move { store(&backup, &data, &[700_000]).await })
                    .await
                    .unwrap()
            }
        }))
        .await;
        let items = refs
            .iter()
            .enumerate()
            .map(|(i, c)| item(&format!("m{i}"), Some(c.clone())))
            .collect();
        let snapshot = backup.commit_snapshot(draft("adele", items)).await.unwrap();

        // Before the session finishes (which writes an index for anything left over), another
        // handle must find every chunk the snapshot refers to.
        let fresh = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        for (data, content) in contents.iter().zip(&refs) {
            assert_eq!(&read_all(&fresh, content).await.unwrap(), data);
        }
        let items = fresh.load_items(&snapshot).await.unwrap();
        assert_eq!(items.len(), contents.len());

        let stats = std::sync::Arc::try_unwrap(backup)
            .unwrap()
            .finish()
            .await
            .unwrap();
        // Every byte written went through a writer; the item list adds a few KiB.
        let written = snapshot_bytes(&contents);
        assert!(
            stats.bytes_in > written && stats.bytes_in < written + 64 * 1024,
            "{stats:?}"
        );
        // The shared 3 MiB is cut the same in every content after it (random bytes before it
        // resynchronise within a chunk or two), so it is stored about once, not twelve times.
        assert!(
            stats.bytes_new < written - 8 * shared.len() as u64,
            "{stats:?}"
        );

        assert!(fresh
            .check(CheckOptions::read_data())
            .await
            .unwrap()
            .is_ok());
    }

    fn snapshot_bytes(contents: &[Vec<u8>]) -> u64 {
        contents.iter().map(|c| c.len() as u64).sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn insertion_in_the_middle_reuses_most_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let original = random_bytes(16 * MIB, 77);
        let mut edited = original.clone();
        let insert = random_bytes(1000, 78);
        edited.splice(8 * MIB..8 * MIB, insert);

        let backup = repo.begin_backup().await.unwrap();
        let a = store(&backup, &original, &[MIB]).await;
        let before = backup.stats();
        let b = store(&backup, &edited, &[777_777]).await;
        let after = backup.stats();
        backup.finish().await.unwrap();

        let shared = b.blobs.iter().filter(|id| a.blobs.contains(id)).count();
        let new_blobs = after.blobs_new - before.blobs_new;
        let new_bytes = after.bytes_new - before.bytes_new;
        assert!(
            a.blobs.len() >= 30,
            "16 MiB at 256 KiB average: {} chunks",
            a.blobs.len()
        );
        assert!(
            new_blobs <= 3,
            "{new_blobs} new chunks for a 1000-byte insertion"
        );
        assert_eq!(shared + new_blobs as usize, b.blobs.len());
        assert!(new_bytes < 4 * MIB as u64, "{new_bytes} new bytes");
        assert_eq!(read_all(&repo, &b).await.unwrap(), edited);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compressible_content_is_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let text = b"From: adele@contoso.com\r\nSubject: quarterly report\r\n\r\nPlease find the numbers below.\r\n"
            .repeat(40_000);
        let backup = repo.begin_backup().await.unwrap();
        let c = store(&backup, &text, &[4096]).await;
        let stats = backup.finish().await.unwrap();
        assert_eq!(stats.bytes_new, text.len() as u64);
        assert!(
            stats.bytes_stored * 10 < text.len() as u64,
            "{} stored for {}",
            stats.bytes_stored,
            text.len()
        );
        assert_eq!(read_all(&repo, &c).await.unwrap(), text);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_one_session() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = std::sync::Arc::new(repo.begin_backup().await.unwrap());
        let shared = random_bytes(3 * MIB, 1000);
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let backup = backup.clone();
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                // Own data big enough that packs seal and upload while others write.
                let mut data = random_bytes(6 * MIB, t);
                data.extend_from_slice(&shared);
                let c = store(&backup, &data, &[300_000 + t as usize * 1000]).await;
                (data, c)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let items = results
            .iter()
            .enumerate()
            .map(|(i, (_, c))| item(&format!("f{i}"), Some(c.clone())))
            .collect();
        for (_, c) in &results {
            assert!(backup.contains(c));
        }
        let stats = backup.stats();
        assert_eq!(stats.bytes_in, 54 * MIB as u64);
        // Own data is new; of the shared 3 MiB each writer adds at most the chunk that
        // straddles the boundary (max 2 MiB) before cut points resynchronise.
        assert!(stats.bytes_new >= 39 * MIB as u64, "{}", stats.bytes_new);
        assert!(
            stats.bytes_new <= 51 * MIB as u64,
            "shared data stored once: {}",
            stats.bytes_new
        );
        let snapshot = backup.commit_snapshot(draft("u1", items)).await.unwrap();
        let backup = std::sync::Arc::into_inner(backup).unwrap();
        let stats = backup.finish().await.unwrap();
        // 39+ MiB of random (stored raw) data in 16 MiB packs.
        assert!(stats.packs_written >= 3, "{stats:?}");
        // Random data is stored raw: stored ≈ new (± pack headers/trailers and the item list).
        assert!(
            stats.bytes_stored.abs_diff(stats.bytes_new) < 64 * 1024,
            "{stats:?}"
        );

        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let items = repo.load_items(&snapshot).await.unwrap();
        for ((data, _), item) in results.iter().zip(&items) {
            assert_eq!(
                &read_all(&repo, item.content.as_ref().unwrap())
                    .await
                    .unwrap(),
                data
            );
        }
        assert!(repo.check(CheckOptions::read_data()).await.unwrap().is_ok());
    }

    /// Regression: a blob claimed by one writer but not yet in a pack must not let a commit
    /// (racing with that writer) write a snapshot that refers to it before it is indexed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_while_writers_run_covers_every_finished_content() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = std::sync::Arc::new(repo.begin_backup().await.unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let backup = backup.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..6u64 {
                    // Same attachment in every writer's round, different write sizes.
                    let data = random_bytes(700_000 + round as usize * 100_000, round);
                    let c = store(&backup, &data, &[10_000 + t as usize * 3_001]).await;
                    tx.send((round, data, c)).unwrap();
                }
            }));
        }
        drop(tx);
        let mut batch = Vec::new();
        let mut commits = 0;
        while let Some(done) = rx.recv().await {
            batch.push(done);
            if batch.len() == 3 || rx.is_closed() && rx.is_empty() {
                let items = batch
                    .iter()
                    .map(|(r, _, c)| item(&format!("r{r}"), Some(c.clone())))
                    .collect();
                let snapshot = backup.commit_snapshot(draft("u", items)).await.unwrap();
                commits += 1;
                // Durable and complete right now, for a reader that starts from scratch.
                let reader = Repository::open(&loc(dir.path()), Some(pass()))
                    .await
                    .unwrap();
                let items = reader.load_items(&snapshot).await.unwrap();
                for ((_, data, _), item) in batch.iter().zip(&items) {
                    assert_eq!(
                        &read_all(&reader, item.content.as_ref().unwrap())
                            .await
                            .unwrap(),
                        data
                    );
                }
                batch.clear();
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(batch.is_empty());
        assert_eq!(commits, 8);
        let backup = std::sync::Arc::into_inner(backup).unwrap();
        let stats = backup.finish().await.unwrap();
        let distinct: u64 = (0..6).map(|r| 700_000 + r * 100_000).sum();
        assert!(
            stats.bytes_new < distinct + 8 * 200_000,
            "identical data stored once: {}",
            stats.bytes_new
        );
    }
}

mod snapshots {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_commit_list_and_find_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let mut committed = Vec::new();
        for (i, user) in ["adele", "bob", "carol"].iter().enumerate() {
            let c = store(&backup, format!("message body {i}").as_bytes(), &[7]).await;
            let mut d = draft(
                user,
                vec![item("Inbox/a.eml", Some(c)), item("Inbox", None)],
            );
            d.parent = committed.last().map(|s: &Snapshot| s.id);
            d.skipped = vec![m365bk_store::SkippedItem {
                path: "Inbox/locked.eml".into(),
                id: "AAMk-locked".into(),
                reason: "403 ErrorAccessDenied".into(),
            }];
            committed.push(backup.commit_snapshot(d).await.unwrap());
        }
        backup.finish().await.unwrap();

        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let listed = repo.list_snapshots().await.unwrap();
        assert_eq!(listed, committed);
        assert!(listed.windows(2).all(|w| w[0].time <= w[1].time));
        assert_eq!(listed[1].parent, Some(listed[0].id));
        assert_eq!(listed[2].resource_id, "carol");
        assert_eq!(listed[2].item_count, 2);
        assert_eq!(listed[2].total_size, "message body 2".len() as u64);
        assert_eq!(listed[2].skipped[0].reason, "403 ErrorAccessDenied");
        assert_eq!(
            listed[0].state["deltaLinks"]["inbox"],
            "https://graph/delta?token=1"
        );

        let by_prefix = repo
            .find_snapshot(&listed[1].id.to_string()[..12])
            .await
            .unwrap();
        assert_eq!(by_prefix, listed[1]);
        let by_full = repo
            .find_snapshot(&listed[2].id.to_string().to_uppercase())
            .await
            .unwrap();
        assert_eq!(by_full.id, listed[2].id);

        let items = repo.load_items(&listed[2]).await.unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].path, "Inbox/a.eml");
        assert_eq!(items[0].metadata["from"], "adele@contoso.com");
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            b"message body 2"
        );

        let err = repo.find_snapshot("abc").await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{err}");
        let err = repo.find_snapshot(&"0".repeat(64)).await.unwrap_err();
        assert!(matches!(err, Error::SnapshotNotFound { .. }), "{err}");
        assert!(err.to_string().contains("m365bk snapshots"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_item_list_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let items: Vec<Item> = (0..20_000)
            .map(|i| item(&format!("Inbox/{i:05}.eml"), None))
            .collect();
        let snapshot = backup
            .commit_snapshot(draft("u", items.clone()))
            .await
            .unwrap();
        assert!(
            snapshot.tree.blobs.len() > 1,
            "a multi-MiB item list spans several chunks"
        );
        assert_eq!(repo.load_items(&snapshot).await.unwrap(), items);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unchanged_content_is_reused_from_parent() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let data = random_bytes(MIB, 3);
        let first = {
            let backup = repo.begin_backup().await.unwrap();
            let c = store(&backup, &data, &[MIB]).await;
            let s = backup
                .commit_snapshot(draft("u", vec![item("a", Some(c))]))
                .await
                .unwrap();
            backup.finish().await.unwrap();
            s
        };
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let parent_items = repo.load_items(&first).await.unwrap();
        let reused = parent_items[0].content.clone().unwrap();
        assert!(backup.contains(&reused));
        let bogus = ContentRef {
            size: 1,
            blobs: vec![m365bk_store::BlobId::from_bytes([7; 32])],
        };
        assert!(!backup.contains(&bogus));
        let mut d = draft("u", parent_items);
        d.parent = Some(first.id);
        let second = backup.commit_snapshot(d).await.unwrap();
        let stats = backup.finish().await.unwrap();
        assert_eq!(stats.blobs_new, 0, "the item list is identical too");
        let items = repo.load_items(&second).await.unwrap();
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            data
        );
    }
}

mod damage {
    use super::*;

    /// Two snapshots whose data lives in different packs; returns (dir, snapshot A, B, pack A, pack B).
    async fn two_snapshots_two_packs() -> (tempfile::TempDir, Snapshot, Snapshot, PathBuf, PathBuf)
    {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let a = store(&backup, &random_bytes(MIB, 1), &[MIB]).await;
        let snap_a = backup
            .commit_snapshot(draft("adele", vec![item("a.bin", Some(a))]))
            .await
            .unwrap();
        let packs_a = pack_files(dir.path());
        assert_eq!(packs_a.len(), 1);
        let b = store(&backup, &random_bytes(MIB, 2), &[MIB]).await;
        let snap_b = backup
            .commit_snapshot(draft("bob", vec![item("b.bin", Some(b))]))
            .await
            .unwrap();
        backup.finish().await.unwrap();
        let packs = pack_files(dir.path());
        assert_eq!(packs.len(), 2);
        let pack_b = packs.into_iter().find(|p| *p != packs_a[0]).unwrap();
        (dir, snap_a, snap_b, packs_a[0].clone(), pack_b)
    }

    async fn content_of(repo: &Repository, s: &Snapshot) -> ContentRef {
        repo.load_items(s).await.unwrap()[0]
            .content
            .clone()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flipped_byte_in_a_pack_is_found_and_named() {
        let (dir, snap_a, snap_b, pack_a, _) = two_snapshots_two_packs().await;
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let content_a = content_of(&repo, &snap_a).await;

        // Inside A's content blob: it starts right after the 8-byte header.
        let mut bytes = std::fs::read(&pack_a).unwrap();
        bytes[8 + 1000] ^= 0x40;
        std::fs::write(&pack_a, &bytes).unwrap();

        let err = read_all(&repo, &content_a).await.unwrap_err();
        let pack_name = file_name(&pack_a);
        assert!(
            matches!(err, Error::CorruptObject { kind: "pack", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&pack_name), "{err}");
        assert!(err.to_string().contains("fails authentication"), "{err}");
        assert!(
            err.to_string().contains("m365bk check --read-data"),
            "{err}"
        );

        // Other snapshot: unaffected.
        let content_b = content_of(&repo, &snap_b).await;
        assert_eq!(
            read_all(&repo, &content_b).await.unwrap(),
            random_bytes(MIB, 2)
        );

        // Structure is intact (sizes unchanged): a plain check passes.
        let report = repo.check(CheckOptions::structure()).await.unwrap();
        assert!(report.is_ok(), "{:#?}", report.errors);
        assert_eq!(report.snapshots_checked, 2);
        assert_eq!(report.packs_checked, 0);

        let report = repo.check(CheckOptions::read_data()).await.unwrap();
        assert_eq!(report.packs_checked, 2);
        assert_eq!(report.snapshots_checked, 2);
        assert_eq!(report.errors.len(), 1, "{:#?}", report.errors);
        let problem = &report.errors[0];
        assert!(problem.object.starts_with("data/"), "{}", problem.object);
        assert!(problem.object.ends_with(&pack_name), "{}", problem.object);
        let in_pack = content_a.blobs.len() + snap_a.tree.blobs.len();
        assert!(
            problem
                .problem
                .contains(&format!("1 of {in_pack} blobs damaged")),
            "{}",
            problem.problem
        );
        assert!(
            problem.problem.contains(&content_a.blobs[0].to_string()),
            "{}",
            problem.problem
        );
        assert_eq!(problem.affected_snapshots, vec![snap_a.id]);
        // The item is named, not only its snapshot.
        assert_eq!(
            problem.affected_items,
            vec![m365bk_store::AffectedItem {
                snapshot: snap_a.id,
                path: "a.bin".into()
            }]
        );
        assert_eq!(problem.more_affected_items, 0);
        assert!(
            problem
                .problem
                .contains("1 item(s) in 1 snapshot(s) are affected"),
            "{}",
            problem.problem
        );
    }

    fn index_file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("index"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A damaged blob: a backup keeps deduplicating against it until `repair index` drops it;
    /// then the same content is stored again and restores, the other snapshot is untouched,
    /// and `check` names the snapshot that still refers to the lost blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repair_index_drops_a_damaged_blob_so_the_next_backup_stores_it_again() {
        let (dir, snap_a, snap_b, pack_a, _) = two_snapshots_two_packs().await;
        let mut bytes = std::fs::read(&pack_a).unwrap();
        bytes[8 + 1000] ^= 0x40;
        std::fs::write(&pack_a, &bytes).unwrap();
        let lock = m365bk_store::LockOptions::default();

        // Before the repair, the same content is deduplicated against the damaged blob.
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let backup = repo.begin_backup().await.unwrap();
        store(&backup, &random_bytes(MIB, 1), &[MIB]).await;
        assert_eq!(
            backup.stats().blobs_new,
            0,
            "deduplicated: the bug repair fixes"
        );
        drop(backup);

        let before = index_file_names(dir.path());
        let dry = repo.repair_index(true, &lock).await.unwrap();
        assert!(dry.dry_run && dry.index_changed, "{dry:#?}");
        assert_eq!(dry.blobs_dropped, 1, "{dry:#?}");
        assert_eq!(
            index_file_names(dir.path()),
            before,
            "a dry run writes nothing"
        );

        let report = repo.repair_index(false, &lock).await.unwrap();
        assert_eq!(report.packs_read, 2);
        assert_eq!(report.blobs_dropped, 1, "{report:#?}");
        assert_eq!(report.damaged.len(), 1, "{report:#?}");
        assert!(
            report.damaged[0].object.ends_with(&file_name(&pack_a)),
            "{report:#?}"
        );
        assert!(
            report.damaged[0].problem.contains("1 blob(s) damaged"),
            "{report:#?}"
        );
        assert!(report.damaged[0].blobs_salvaged >= 1, "{report:#?}");
        assert_eq!(report.damaged[0].blobs_dropped, 1, "{report:#?}");
        assert_eq!(
            report.packs_written, 1,
            "the sound blobs, salvaged: {report:#?}"
        );
        assert!(
            report.index_files_written >= 1 && report.index_files_deleted == before.len() as u64
        );
        assert!(index_file_names(dir.path())
            .iter()
            .all(|n| !before.contains(n)));

        // A fresh process: check names the snapshot whose blob is now in no index, only it.
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let check = repo.check(CheckOptions::structure()).await.unwrap();
        let affected: Vec<_> = check
            .errors
            .iter()
            .flat_map(|p| p.affected_snapshots.clone())
            .collect();
        assert_eq!(affected, vec![snap_a.id], "{:#?}", check.errors);
        assert!(
            check.errors[0].problem.contains("forget --snapshot"),
            "{:#?}",
            check.errors
        );

        // The damaged blob is in no index, so the same content is stored again.
        let backup = repo.begin_backup().await.unwrap();
        let again = store(&backup, &random_bytes(MIB, 1), &[MIB]).await;
        assert!(backup.stats().blobs_new >= 1, "{:?}", backup.stats());
        let snap_c = backup
            .commit_snapshot(draft("adele", vec![item("a.bin", Some(again))]))
            .await
            .unwrap();
        backup.finish().await.unwrap();
        let content_c = content_of(&repo, &snap_c).await;
        assert_eq!(
            read_all(&repo, &content_c).await.unwrap(),
            random_bytes(MIB, 1)
        );
        let content_b = content_of(&repo, &snap_b).await;
        assert_eq!(
            read_all(&repo, &content_b).await.unwrap(),
            random_bytes(MIB, 2)
        );

        // The blob is content-addressed: stored again, it heals the old snapshot too.
        let content_a = content_of(&repo, &snap_a).await;
        assert_eq!(
            read_all(&repo, &content_a).await.unwrap(),
            random_bytes(MIB, 1)
        );
        // The damaged pack is in no index any more: check is clean (it notes the unindexed
        // pack), and prune deletes it.
        let check = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(check.is_ok(), "{:#?}", check.errors);
        assert_eq!(check.unindexed_packs.len(), 1, "{check:#?}");

        // Repairing again changes nothing: the damaged blob is already out.
        let again = repo.repair_index(false, &lock).await.unwrap();
        assert!(!again.index_changed, "{again:#?}");
        assert_eq!((again.index_files_written, again.packs_written), (0, 0));

        // Prune deletes the damaged pack; then check finds nothing at all.
        repo.prune(&m365bk_store::PruneOptions::default(), &lock)
            .await
            .unwrap();
        assert!(!pack_a.exists(), "prune deleted the damaged pack");
        let check = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(check.is_ok(), "{:#?}", check.errors);
        assert!(check.unindexed_packs.is_empty(), "{check:#?}");
    }

    /// A pack whose trailer is damaged but whose blobs are sound: repair falls back to the
    /// index's entries for it, finds every blob good, and salvages them all into a new pack.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repair_index_salvages_a_pack_with_a_damaged_trailer_through_the_index() {
        let (dir, _, snap_b, _, pack_b) = two_snapshots_two_packs().await;
        let mut bytes = std::fs::read(&pack_b).unwrap();
        let in_trailer = bytes.len() - 8 - 20;
        bytes[in_trailer] ^= 0x01;
        std::fs::write(&pack_b, &bytes).unwrap();
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let report = repo
            .repair_index(false, &m365bk_store::LockOptions::default())
            .await
            .unwrap();
        assert_eq!(report.blobs_dropped, 0, "{report:#?}");
        assert_eq!(report.damaged.len(), 1, "{report:#?}");
        assert!(
            report.damaged[0]
                .problem
                .contains("entries for it are tried instead"),
            "{report:#?}"
        );
        assert!(report.damaged[0].blobs_salvaged >= 1 && report.packs_written == 1);
        let b = content_of(&repo, &snap_b).await;
        assert_eq!(read_all(&repo, &b).await.unwrap(), random_bytes(MIB, 2));
        let check = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(check.is_ok(), "{:#?}", check.errors);
    }

    /// Every index file lost: `repair index` re-indexes the packs from their trailers, and
    /// both snapshots restore and check clean again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repair_index_reindexes_packs_after_the_index_files_are_lost() {
        let (dir, snap_a, snap_b, _, _) = two_snapshots_two_packs().await;
        for f in index_file_names(dir.path()) {
            std::fs::remove_file(dir.path().join("index").join(f)).unwrap();
        }
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        assert!(!repo.check(CheckOptions::default()).await.unwrap().is_ok());
        let report = repo
            .repair_index(false, &m365bk_store::LockOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (report.packs_reindexed, report.blobs_dropped),
            (2, 0),
            "{report:#?}"
        );
        assert!(report.damaged.is_empty(), "{report:#?}");
        let check = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(check.is_ok(), "{:#?}", check.errors);
        let a = content_of(&repo, &snap_a).await;
        assert_eq!(read_all(&repo, &a).await.unwrap(), random_bytes(MIB, 1));
        let b = content_of(&repo, &snap_b).await;
        assert_eq!(read_all(&repo, &b).await.unwrap(), random_bytes(MIB, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_data_subset_reads_that_share_of_the_packs() {
        let (dir, snap_a, _, pack_a, _) = two_snapshots_two_packs().await;
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let mut bytes = std::fs::read(&pack_a).unwrap();
        bytes[8 + 1000] ^= 0x40;
        std::fs::write(&pack_a, &bytes).unwrap();

        // 1% of 2 packs rounds up to one pack; 50% is one pack; 100% is both.
        let mut found = 0;
        for _ in 0..16 {
            let report = repo.check(CheckOptions::read_data_subset(1)).await.unwrap();
            assert_eq!(report.packs_indexed, 2);
            assert_eq!(report.packs_checked, 1);
            if !report.is_ok() {
                assert_eq!(report.errors.len(), 1, "{:#?}", report.errors);
                assert_eq!(report.errors[0].affected_snapshots, vec![snap_a.id]);
                found += 1;
            }
        }
        // Each run draws afresh: 16 runs that all miss the damaged pack have odds 2^-16.
        assert!(
            found > 0 && found < 16,
            "damaged pack found in {found} of 16 runs"
        );
        let report = repo
            .check(CheckOptions::read_data_subset(50))
            .await
            .unwrap();
        assert_eq!(report.packs_checked, 1);
        let report = repo
            .check(CheckOptions::read_data_subset(100))
            .await
            .unwrap();
        assert_eq!(report.packs_checked, 2);
        assert_eq!(report.errors.len(), 1, "{:#?}", report.errors);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncated_pack_is_reported() {
        let (dir, snap_a, snap_b, _, pack_b) = two_snapshots_two_packs().await;
        let full = std::fs::metadata(&pack_b).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&pack_b)
            .unwrap();
        f.set_len(full / 2).unwrap();
        drop(f);

        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let report = repo.check(CheckOptions::default()).await.unwrap();
        let pack_problems: Vec<_> = report
            .errors
            .iter()
            .filter(|p| p.object.starts_with("data/"))
            .collect();
        assert_eq!(pack_problems.len(), 1, "{:#?}", report.errors);
        let p = pack_problems[0];
        assert!(p.object.ends_with(&file_name(&pack_b)));
        assert!(
            p.problem
                .contains(&format!("{} bytes long, the index says {full}", full / 2)),
            "{}",
            p.problem
        );
        assert!(p.problem.contains("truncated"), "{}", p.problem);
        assert_eq!(p.affected_snapshots, vec![snap_b.id]);
        assert!(
            p.affected_items.is_empty() && p.problem.contains("their items could not be listed"),
            "{p:?}"
        );
        assert_eq!(
            (report.snapshots_checked, report.snapshots_unreadable),
            (1, 1)
        );
        // B's item list lived in the lost half too.
        assert!(report
            .errors
            .iter()
            .any(|p| p.object.ends_with(&snap_b.id.to_string())
                && p.problem.contains("item list unreadable")));

        let report = repo.check(CheckOptions::read_data()).await.unwrap();
        let p = report
            .errors
            .iter()
            .find(|p| p.object.ends_with(&file_name(&pack_b)))
            .unwrap();
        assert!(
            p.problem.contains("beyond the end of the pack"),
            "{}",
            p.problem
        );
        assert_eq!(p.affected_snapshots, vec![snap_b.id]);

        // A is still readable; B's data gives a clear error.
        let content_a = content_of(&repo, &snap_a).await;
        assert_eq!(
            read_all(&repo, &content_a).await.unwrap(),
            random_bytes(MIB, 1)
        );
        let err = repo.load_items(&snap_b).await.unwrap_err();
        assert!(
            matches!(err, Error::CorruptObject { kind: "pack", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_pack_is_reported_as_missing_and_check_does_not_send_the_operator_to_check() {
        let (dir, _snap_a, snap_b, _, pack_b) = two_snapshots_two_packs().await;
        std::fs::remove_file(&pack_b).unwrap();
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        for opts in [CheckOptions::default(), CheckOptions::read_data()] {
            let report = repo.check(opts).await.unwrap();
            let p = report
                .errors
                .iter()
                .find(|p| p.object.ends_with(&file_name(&pack_b)))
                .unwrap_or_else(|| panic!("{:#?}", report.errors));
            assert!(
                p.problem.starts_with(
                    "pack is missing: the index lists it but it is not in the repository;"
                ),
                "{}",
                p.problem
            );
            assert_eq!(p.affected_snapshots, vec![snap_b.id]);
            // B's item list lived in that pack: named, without the advice to run `check`.
            let items = report
                .errors
                .iter()
                .find(|p| p.object.ends_with(&snap_b.id.to_string()))
                .unwrap_or_else(|| panic!("{:#?}", report.errors));
            assert!(
                items
                    .problem
                    .starts_with("item list unreadable: pack data/")
                    && items.problem.ends_with("is missing from the repository"),
                "{}",
                items.problem
            );
            for p in &report.errors {
                assert!(!p.problem.contains("run `m365bk check"), "{}", p.problem);
            }
        }
        // Outside check, the error still says what to run.
        let err = repo.load_items(&snap_b).await.unwrap_err();
        assert!(err.to_string().contains("run `m365bk check`"), "{err}");
        assert_eq!(
            err.cause(),
            format!(
                "pack data/{}/{} is missing from the repository",
                &file_name(&pack_b)[..2],
                file_name(&pack_b)
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_index_file_is_reported() {
        let (dir, snap_a, snap_b, _, _) = two_snapshots_two_packs().await;
        let mut index_files: Vec<_> = std::fs::read_dir(dir.path().join("index"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        index_files.sort();
        assert_eq!(index_files.len(), 2, "one index file per commit");
        for f in &index_files {
            std::fs::remove_file(f).unwrap();
        }
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let report = repo.check(CheckOptions::default()).await.unwrap();
        assert_eq!(report.unindexed_packs.len(), 2);
        assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
        for problem in &report.errors {
            assert!(
                problem.problem.contains("in no index file"),
                "{}",
                problem.problem
            );
            assert!(
                problem.problem.contains("if an index file was lost"),
                "{}",
                problem.problem
            );
            assert!(
                problem.problem.contains("m365bk repair index"),
                "{}",
                problem.problem
            );
        }
        let mut affected: Vec<_> = report
            .errors
            .iter()
            .flat_map(|p| p.affected_snapshots.clone())
            .collect();
        affected.sort();
        let mut expected = vec![snap_a.id, snap_b.id];
        expected.sort();
        assert_eq!(affected, expected);

        let err = repo.load_items(&snap_a).await.unwrap_err();
        assert!(matches!(err, Error::BlobNotIndexed { .. }), "{err}");
        assert!(err.to_string().contains("in no index file"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interrupted_backup_leaves_a_readable_repository() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let first = {
            let backup = repo.begin_backup().await.unwrap();
            let c = store(&backup, b"kept", &[4]).await;
            backup
                .commit_snapshot(draft("u", vec![item("kept", Some(c))]))
                .await
                .unwrap()
        };
        {
            // More than one pack of data, then "crash": no commit, no finish.
            let backup = repo.begin_backup().await.unwrap();
            let _lost = store(&backup, &random_bytes(20 * MIB, 9), &[MIB]).await;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pack_files(dir.path()).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "background pack upload never landed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let report = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(report.is_ok(), "{:#?}", report.errors);
        assert_eq!(report.unindexed_packs.len(), 1, "the orphan pack");
        assert_eq!(repo.list_snapshots().await.unwrap(), vec![first.clone()]);
        let items = repo.load_items(&first).await.unwrap();
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            b"kept"
        );
    }
}

mod locations {
    use super::*;

    #[tokio::test]
    async fn not_a_repository_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RepositoryNotFound { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&loc(dir.path())), "{text}");
        assert!(text.contains("run `m365bk init` first"), "{text}");
        assert!(text.contains("repository.url"), "{text}");

        let missing = dir.path().join("nope");
        let err = Repository::open(&loc(&missing), Some(pass()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RepositoryNotFound { .. }), "{err}");
        assert!(!missing.exists(), "open must not create anything");

        // A relative path is named by its absolute directory (not "repository repository …"),
        // and so is a file:// URL.
        let relative = "m365bk-test-no-such-repository";
        let err = Repository::open(relative, Some(pass())).await.unwrap_err();
        let absolute = std::env::current_dir().unwrap().join(relative);
        assert!(
            err.to_string()
                .starts_with(&format!("no m365bk repository at {}: ", absolute.display())),
            "{err}"
        );
        let err = Repository::open(&format!("file://{}", missing.display()), Some(pass()))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("no m365bk repository at {}: ", missing.display())),
            "{err}"
        );

        // An existing repository opened by a relative path: the wrong-passphrase error and
        // `location()` name its absolute directory.
        Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = format!(
            "{up}{}",
            dir.path().display().to_string().trim_start_matches('/')
        );
        let err = Repository::open(&relative, Some(SecretString::from("wrong")))
            .await
            .unwrap_err();
        let resolved = std::fs::canonicalize(dir.path()).unwrap();
        assert!(
            err.to_string().contains(&format!(
                "any key slot of repository {}:",
                resolved.display()
            )),
            "{err}"
        );
        let repo = Repository::open(&relative, Some(pass())).await.unwrap();
        assert_eq!(Path::new(repo.location()), resolved);
    }

    #[tokio::test]
    async fn init_twice_file_urls_and_unsupported_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/repo");
        let url = format!("file://{}", path.display());
        let repo = Repository::init(&url, opts()).await.unwrap();
        assert_eq!(repo.id().len(), 64);
        assert!(path.join("config").is_file());

        let err = Repository::init(&loc(&path), opts()).await.unwrap_err();
        assert!(matches!(err, Error::RepositoryExists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            std::fs::read_dir(path.join("keys")).unwrap().count(),
            1,
            "a failed init adds no key slot"
        );

        let reopened = Repository::open(&loc(&path), Some(pass())).await.unwrap();
        assert_eq!(reopened.id(), repo.id());

        let err = Repository::open("ftp://host/prefix", Some(pass()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedLocation { .. }), "{err}");
        assert!(err.to_string().contains("unknown scheme ftp://"), "{err}");
        assert!(err.to_string().contains("s3://BUCKET/PREFIX"), "{err}");
    }

    #[tokio::test]
    async fn relative_paths_resolve_against_cwd() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let rel = file_name(dir.path());
        let repo = Repository::init(&rel, opts()).await.unwrap();
        assert!(dir.path().join("config").is_file());
        assert_eq!(
            Repository::open(&rel, Some(pass())).await.unwrap().id(),
            repo.id()
        );
    }

    #[tokio::test]
    async fn newer_config_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let config = dir.path().join("config");
        let mut bytes = std::fs::read(&config).unwrap();
        bytes[4] = 9;
        std::fs::write(&config, bytes).unwrap();
        let err = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found: 9,
                    supported: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade m365bk"), "{err}");
    }
}

mod encryption {
    use super::*;

    /// Every file under `dir` with its bytes.
    fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    async fn with_one_snapshot(dir: &Path, init: InitOptions) -> (Snapshot, Vec<u8>) {
        let repo = Repository::init(&loc(dir), init).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let mut data = b"Subject: quarterly report for adele\r\n\r\n".repeat(2000);
        data.extend(random_bytes(300_000, 4));
        let c = store(&backup, &data, &[70_000]).await;
        let snapshot = backup
            .commit_snapshot(draft("adele", vec![item("Inbox/quarterly.eml", Some(c))]))
            .await
            .unwrap();
        backup.finish().await.unwrap();
        (snapshot, data)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_or_missing_passphrase_is_named_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, data) = with_one_snapshot(dir.path(), opts()).await;
        let before = tree(dir.path());

        let err = Repository::open(
            &loc(dir.path()),
            Some(SecretString::from("Correct horse battery staple")),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("does not open any key slot"), "{text}");
        assert!(text.contains(&loc(dir.path())), "{text}");
        assert!(
            text.contains("repository.passphrase_file") && text.contains("$M365BK_PASSPHRASE"),
            "{text}"
        );

        let err = Repository::open(&loc(dir.path()), None).await.unwrap_err();
        assert!(matches!(err, Error::PassphraseRequired { .. }), "{err}");
        assert!(err.to_string().contains("is encrypted"), "{err}");

        assert_eq!(tree(dir.path()), before, "failed opens wrote nothing");
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let items = repo.load_items(&snapshot).await.unwrap();
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            data
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_readable_without_the_key() {
        let xchacha = InitOptions {
            cipher: Cipher::XChaCha20Poly1305,
            ..opts()
        };
        // (options, header version and envelope of every object but the key slots): the lowest
        // version that can express the repository, so older builds read what they can.
        for (init, version, envelope) in [
            (opts(), 3u8, 2u8),
            (xchacha, 2, 1),
            (InitOptions::no_encryption(), 2, 0),
        ] {
            let encrypted = envelope != 0;
            let dir = tempfile::tempdir().unwrap();
            let (snapshot, data) = with_one_snapshot(dir.path(), init).await;
            let repo = Repository::open(&loc(dir.path()), Some(pass()))
                .await
                .unwrap();
            assert_eq!(repo.is_encrypted(), encrypted);
            let items = repo.load_items(&snapshot).await.unwrap();
            let blob = items[0].content.as_ref().unwrap().blobs[0];
            let needles: [&[u8]; 5] = [
                b"quarterly",
                b"adele",
                b"gear_seed",
                &data[data.len() - 64..],
                blob.as_bytes(),
            ];
            let files = tree(dir.path());
            let found: Vec<String> = needles
                .iter()
                .filter(|n| files.values().any(|f| f.windows(n.len()).any(|w| w == **n)))
                .map(|n| String::from_utf8_lossy(&n[..n.len().min(12)]).into_owned())
                .collect();
            if encrypted {
                assert!(
                    found.is_empty(),
                    "readable in an encrypted repository: {found:?}"
                );
                assert!(files.keys().any(|p| p.starts_with(dir.path().join("keys"))));
            } else {
                assert_eq!(
                    found.len(),
                    needles.len(),
                    "the test would see plaintext: {found:?}"
                );
                assert!(!dir.path().join("keys").exists());
            }
            // Key slots keep their version-2 format.
            for (path, bytes) in &files {
                let want = if path.starts_with(dir.path().join("keys")) {
                    [2, 0]
                } else {
                    [version, envelope]
                };
                assert_eq!(bytes[4..6], want, "{}", path.display());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_add_list_remove_and_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, data) = with_one_snapshot(dir.path(), opts()).await;
        let location = loc(dir.path());
        let second = || SecretString::from("second passphrase, for the other admin");
        let third = || SecretString::from("third passphrase after passwd");

        let by_first = Repository::open(&location, Some(pass())).await.unwrap();
        let first_id = by_first.current_key().unwrap();
        let second_id = by_first.add_key(second(), TEST_KDF).await.unwrap();
        let keys = by_first.list_keys().await.unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().any(|k| k.id == first_id && k.current));
        assert!(keys
            .iter()
            .any(|k| k.id == second_id && !k.current && k.kdf == TEST_KDF));

        // Both passphrases open it; the same repository either way.
        let by_second = Repository::open(&location, Some(second())).await.unwrap();
        assert_eq!(by_second.current_key(), Some(second_id));
        assert_eq!(by_second.id(), by_first.id());

        // The key in use, and bad ids, are refused.
        let err = by_first
            .remove_key(&first_id.to_string())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::KeyInUse { .. }), "{err}");
        assert!(
            err.to_string().contains("another key slot's passphrase"),
            "{err}"
        );
        let err = by_first.remove_key("ab").await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { kind: "key", .. }), "{err}");
        let err = by_first.remove_key(&"0".repeat(64)).await.unwrap_err();
        assert!(matches!(err, Error::KeyNotFound { .. }), "{err}");

        // Removed with the other passphrase (by short id): the first no longer opens it.
        assert_eq!(
            by_second.remove_key(&first_id.short()).await.unwrap(),
            first_id
        );
        let err = Repository::open(&location, Some(pass())).await.unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");

        // The last slot stays.
        let err = by_second
            .remove_key(&second_id.to_string())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::LastKey { .. }), "{err}");

        // passwd: a new slot replaces the current one.
        let third_id = by_second
            .change_passphrase(third(), TEST_KDF)
            .await
            .unwrap();
        assert_eq!(by_second.current_key(), Some(third_id));
        let keys = by_second.list_keys().await.unwrap();
        assert_eq!(
            keys.iter().map(|k| k.id).collect::<Vec<_>>(),
            vec![third_id]
        );
        let err = Repository::open(&location, Some(second()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
        let repo = Repository::open(&location, Some(third())).await.unwrap();
        let items = repo.load_items(&snapshot).await.unwrap();
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            data
        );
        assert!(repo.check(CheckOptions::read_data()).await.unwrap().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plaintext_repository_only_when_asked_and_has_no_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, data) = with_one_snapshot(dir.path(), InitOptions::no_encryption()).await;
        let repo = Repository::open(&loc(dir.path()), None).await.unwrap();
        assert!(!repo.is_encrypted());
        assert_eq!(repo.current_key(), None);
        let items = repo.load_items(&snapshot).await.unwrap();
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            data
        );
        for err in [
            repo.list_keys().await.unwrap_err(),
            repo.add_key(pass(), TEST_KDF).await.unwrap_err(),
            repo.remove_key("abcd").await.unwrap_err(),
        ] {
            assert!(matches!(err, Error::NotEncrypted { .. }), "{err}");
            assert!(err.to_string().contains("--no-encryption"), "{err}");
        }
        assert!(repo.check(CheckOptions::read_data()).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn bad_key_derivation_parameters_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = Repository::init(
            &loc(dir.path()),
            InitOptions {
                encryption: Encryption::Passphrase(pass()),
                kdf: KdfParams {
                    memory_kib: 1,
                    ..TEST_KDF
                },
                cipher: Default::default(),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::InvalidKdfParams { .. }), "{err}");
        assert!(err.to_string().contains("at least 8 KiB per lane"), "{err}");
        let err = Repository::init(
            &loc(dir.path()),
            InitOptions {
                encryption: Encryption::Passphrase(SecretString::from("")),
                kdf: TEST_KDF,
                cipher: Default::default(),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::EmptyPassphrase), "{err}");
        assert!(!dir.path().join("config").exists());
        assert!(!dir.path().join("keys").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plaintext_object_planted_in_an_encrypted_repository_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (snapshot, _) = with_one_snapshot(dir.path(), opts()).await;
        // A plaintext snapshot named by its hash, as an attacker with write access could add.
        let mut planted = b"MBKS\x02\x00\x00\x00".to_vec();
        planted.extend(zstd::bulk::compress(b"{}", 3).unwrap());
        let id = blake3::hash(&planted).to_hex().to_string();
        std::fs::write(dir.path().join("snapshots").join(&id), &planted).unwrap();
        let repo = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        let err = repo.find_snapshot(&id).await.unwrap_err();
        assert!(err.to_string().contains("stored in plaintext"), "{err}");
        let report = repo.check(CheckOptions::default()).await.unwrap();
        assert_eq!(report.errors.len(), 1, "{:#?}", report.errors);
        assert!(report.errors[0].object.ends_with(&id));
        assert!(repo.find_snapshot(&snapshot.id.to_string()).await.is_ok());
    }

    /// A repository in the version-1 format (plaintext, as the first release wrote it), built
    /// here byte by byte from `docs/repository-format.md`, opens and reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_1_repository_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let key = [0x42u8; 32];
        let put = |rel: String, bytes: &[u8]| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        };
        let v1_header = |magic: &[u8; 4]| {
            let mut h = magic.to_vec();
            h.extend_from_slice(&[1, 0, 0, 0]);
            h
        };
        let mut config = v1_header(b"MBKC");
        config.extend_from_slice(
            serde_json::json!({
                "version": 1,
                "id": "ab".repeat(32),
                "created": "2026-11-29T10:00:00Z",
                "chunker": { "algorithm": "fastcdc-v2020", "min_size": 65536, "avg_size": 262144,
                             "max_size": 2097152, "normalization": 1, "gear_seed": 7 },
                "blob_id": { "algorithm": "blake3-keyed", "key": hex::encode(key) },
                "compression": { "algorithm": "zstd", "level": 3 },
                "pack_target_size": 16777216u64
            })
            .to_string()
            .as_bytes(),
        );
        put("config".into(), &config);

        let content = b"Subject: from version 1\r\n\r\nstill here".to_vec();
        let content_id = blake3::keyed_hash(&key, &content);
        let item_line = serde_json::json!({
            "kind": "message", "id": "AAMk1", "path": "Inbox/old.eml", "size": content.len(),
            "metadata": {},
            "content": { "size": content.len(), "blobs": [content_id.to_hex().to_string()] }
        })
        .to_string();
        let tree_id = blake3::keyed_hash(&key, item_line.as_bytes());

        // Pack: header, two raw blobs, trailer, footer.
        let mut pack = v1_header(b"MBKP");
        let mut entries = Vec::new();
        for (id, data) in [(content_id, &content[..]), (tree_id, item_line.as_bytes())] {
            entries.extend_from_slice(id.as_bytes());
            entries.extend_from_slice(&(pack.len() as u32).to_le_bytes());
            entries.extend_from_slice(&(data.len() as u32).to_le_bytes());
            entries.extend_from_slice(&(data.len() as u32).to_le_bytes());
            entries.push(0);
            pack.extend_from_slice(data);
        }
        let mut trailer = 2u32.to_le_bytes().to_vec();
        trailer.extend_from_slice(&entries);
        let checksum = blake3::hash(&trailer);
        trailer.extend_from_slice(checksum.as_bytes());
        pack.extend_from_slice(&trailer);
        pack.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        pack.extend_from_slice(b"MBKF");
        let pack_id = blake3::hash(&pack).to_hex().to_string();
        put(format!("data/{}/{pack_id}", &pack_id[..2]), &pack);

        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(blake3::hash(&pack).as_bytes());
        body.extend_from_slice(&(pack.len() as u64).to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&entries);
        let mut index = v1_header(b"MBKI");
        index.extend(zstd::bulk::compress(&body, 3).unwrap());
        put(format!("index/{}", blake3::hash(&index).to_hex()), &index);

        let mut snap = v1_header(b"MBKS");
        let json = serde_json::json!({
            "time": "2026-11-29T10:00:00Z", "hostname": "old", "service": "exchange",
            "resource_id": "adele", "resource_name": "adele@contoso.com", "job_id": "j",
            "tags": [], "parent": null,
            "tree": { "size": item_line.len(), "blobs": [tree_id.to_hex().to_string()] },
            "item_count": 1, "total_size": content.len(), "state": {}, "skipped": []
        });
        snap.extend(zstd::bulk::compress(json.to_string().as_bytes(), 3).unwrap());
        let snap_id = blake3::hash(&snap).to_hex().to_string();
        put(format!("snapshots/{snap_id}"), &snap);

        let repo = Repository::open(&loc(root), None).await.unwrap();
        assert!(!repo.is_encrypted());
        let snapshots = repo.list_snapshots().await.unwrap();
        assert_eq!(snapshots.len(), 1);
        assert_eq!(snapshots[0].id.to_string(), snap_id);
        let items = repo.load_items(&snapshots[0]).await.unwrap();
        assert_eq!(items[0].path, "Inbox/old.eml");
        assert_eq!(
            read_all(&repo, items[0].content.as_ref().unwrap())
                .await
                .unwrap(),
            content
        );
        let report = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(report.is_ok(), "{:#?}", report.errors);
        assert_eq!(report.blobs_checked, 2);

        // New backups into it keep its format: version-1 plaintext objects.
        back_up_one_keeping_the_format(&repo, root, |_| [1, 0]).await;
        let repo = Repository::open(&loc(root), None).await.unwrap();
        assert!(repo.check(CheckOptions::read_data()).await.unwrap().is_ok());
    }

    /// Backs up one item into an older-format repository at `root`, then checks every object's
    /// header version and envelope against `want(path)`: new objects keep the old format.
    async fn back_up_one_keeping_the_format(
        repo: &Repository,
        root: &Path,
        want: impl Fn(&Path) -> [u8; 2],
    ) {
        let backup = repo.begin_backup().await.unwrap();
        let c = store(&backup, b"written by a newer build", &[7]).await;
        backup
            .commit_snapshot(draft("bob", vec![item("a", Some(c))]))
            .await
            .unwrap();
        backup.finish().await.unwrap();
        for (path, bytes) in tree(root) {
            assert_eq!(bytes[4..6], want(&path), "{}", path.display());
        }
    }

    /// The files `tests/fixtures/v2-repository` was made from (see `tests/fixtures/README.md`).
    fn v2_fixture_files() -> Vec<(&'static str, Vec<u8>)> {
        let mut eml = String::from("Subject: version 2\r\n\r\n");
        eml.extend((0..3000).map(|i| format!("line {i}\n")));
        let report: String = (0..8000)
            .map(|i| format!("m365bk version-2 fixture {i}\n"))
            .collect();
        vec![
            ("drive/copy.txt", report.clone().into_bytes()),
            ("drive/report.txt", report.into_bytes()),
            ("inbox/1.eml", eml.into_bytes()),
        ]
    }

    /// A version-2 repository (XChaCha20-Poly1305) written by the build before format version
    /// 3 opens with its passphrase, restores, checks clean, and new backups into it keep its
    /// format, so that build can still read it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_2_repository_still_opens_and_keeps_its_format() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2-repository");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, bytes) in tree(&fixture) {
            let to = root.join(path.strip_prefix(&fixture).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, bytes).unwrap();
        }
        let pass = || Some(SecretString::from("version 2 fixture"));
        let repo = Repository::open(&loc(root), pass()).await.unwrap();
        assert!(repo.is_encrypted());
        let snapshots = repo.list_snapshots().await.unwrap();
        assert_eq!(snapshots.len(), 1);
        let items = repo.load_items(&snapshots[0]).await.unwrap();
        let mut restored: Vec<(String, Vec<u8>)> = Vec::new();
        for item in &items {
            let content = item.content.as_ref().unwrap();
            restored.push((item.path.clone(), read_all(&repo, content).await.unwrap()));
        }
        restored.sort();
        let expected: Vec<(String, Vec<u8>)> = v2_fixture_files()
            .into_iter()
            .map(|(p, b)| (p.to_owned(), b))
            .collect();
        assert_eq!(restored, expected);
        let report = repo.check(CheckOptions::read_data()).await.unwrap();
        assert!(report.is_ok(), "{:#?}", report.errors);

        back_up_one_keeping_the_format(&repo, root, |path| {
            if path.starts_with(root.join("keys")) {
                [2, 0]
            } else {
                [2, 1]
            }
        })
        .await;
        let repo = Repository::open(&loc(root), pass()).await.unwrap();
        assert_eq!(repo.list_snapshots().await.unwrap().len(), 2);
        assert!(repo.check(CheckOptions::read_data()).await.unwrap().is_ok());
    }
}

mod catalog {
    use super::*;

    async fn repo_with_snapshots(dir: &Path) -> (Repository, Vec<Snapshot>) {
        let repo = Repository::init(&loc(dir), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        let mut snaps = Vec::new();
        for (i, user) in ["adele", "bob", "carol"].iter().enumerate() {
            let mut items = vec![item("Inbox", None)];
            for j in 0..=i {
                let c = store(&backup, format!("{user} message {j}").as_bytes(), &[5]).await;
                items.push(item(&format!("Inbox/{j}.eml"), Some(c)));
            }
            snaps.push(backup.commit_snapshot(draft(user, items)).await.unwrap());
        }
        backup.finish().await.unwrap();
        (repo, snaps)
    }

    /// The item journal: entries survive a reopen (a killed process), are kept per scope and
    /// collection, replaced per item, and discarded per collection or per scope.
    #[test]
    fn item_journal_keeps_entries_per_scope_and_collection_until_discarded() {
        use m365bk_store::{ItemJournal, StoredItem};
        let cat_dir = tempfile::tempdir().unwrap();
        let db = cat_dir.path().join("catalog.sqlite");
        let entry = |id: &str, version: &str, size: u64| StoredItem {
            item_id: id.to_owned(),
            kind: "message".to_owned(),
            version: version.to_owned(),
            content: ContentRef {
                size,
                blobs: vec![m365bk_store::BlobId::from_bytes([size as u8; 32])],
            },
        };
        {
            let catalog = Catalog::open(&db).unwrap();
            let adele = ItemJournal::new(catalog.clone(), "exchange/adele");
            let bob = ItemJournal::new(catalog, "exchange/bob");
            adele.record("inbox", &entry("m1", "ck1", 1)).unwrap();
            adele.record("inbox", &entry("m1", "ck2", 2)).unwrap();
            adele.record("inbox", &entry("m2", "ck1", 3)).unwrap();
            adele.record("sent", &entry("m3", "ck1", 4)).unwrap();
            bob.record("inbox", &entry("m1", "ck9", 5)).unwrap();
        }
        let catalog = Catalog::open(&db).unwrap();
        let adele = ItemJournal::new(catalog.clone(), "exchange/adele");
        let inbox = adele.load("inbox").unwrap();
        assert_eq!(inbox.len(), 2);
        assert_eq!(inbox["m1"], entry("m1", "ck2", 2), "the last record wins");
        assert_eq!(inbox["m2"], entry("m2", "ck1", 3));
        adele.discard(Some("inbox")).unwrap();
        assert!(adele.load("inbox").unwrap().is_empty());
        assert_eq!(adele.load("sent").unwrap().len(), 1);
        catalog
            .discard_stored_items("exchange/adele", None)
            .unwrap();
        assert!(adele.load("sent").unwrap().is_empty());
        let bob = ItemJournal::new(catalog, "exchange/bob");
        assert_eq!(bob.load("inbox").unwrap()["m1"], entry("m1", "ck9", 5));
    }

    /// A snapshot object corrupted after the catalog recorded it: the scan names it, sync
    /// keeps its rows (it is still in the repository) and reports it, and only
    /// `forget_snapshots` removes it; a name that is not there is refused and deletes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_snapshot_is_reported_kept_in_the_catalog_and_forgettable_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, snaps) = repo_with_snapshots(dir.path()).await;
        let cat_dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&cat_dir.path().join("catalog.sqlite")).unwrap();
        assert_eq!(catalog.sync(&repo).await.unwrap().added, 3);

        let object = dir.path().join("snapshots").join(snaps[1].id.to_string());
        let mut bytes = std::fs::read(&object).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&object, &bytes).unwrap();

        // A flipped bit in another snapshot's header (its format version byte) is damage
        // too, not a newer format.
        let header = dir.path().join("snapshots").join(snaps[2].id.to_string());
        let mut bytes = std::fs::read(&header).unwrap();
        bytes[4] ^= 0x10;
        std::fs::write(&header, &bytes).unwrap();
        let scan = repo.scan_snapshots().await.unwrap();
        assert_eq!(scan.unreadable.len(), 2, "{:?}", scan.unreadable);
        bytes[4] ^= 0x10;
        std::fs::write(&header, &bytes).unwrap();

        assert!(
            repo.list_snapshots().await.is_err(),
            "the strict listing fails"
        );
        let scan = repo.scan_snapshots().await.unwrap();
        assert_eq!(
            scan.snapshots.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![snaps[0].id, snaps[2].id]
        );
        assert_eq!(scan.unreadable.len(), 1);
        assert_eq!(scan.unreadable[0].id, snaps[1].id);
        assert!(
            scan.unreadable[0].error.contains("corrupt"),
            "{}",
            scan.unreadable[0].error
        );

        let stats = catalog.sync(&repo).await.unwrap();
        assert_eq!((stats.added, stats.removed), (0, 0));
        assert_eq!(stats.unreadable, scan.unreadable);
        assert_eq!(catalog.snapshots(repo.id()).unwrap().len(), 3, "rows kept");

        let lock = m365bk_store::LockOptions::default();
        let nowhere = m365bk_store::SnapshotId::from_bytes([7; 32]);
        let err = repo
            .forget_snapshots(&[snaps[1].id, nowhere], false, &lock)
            .await
            .unwrap_err();
        assert!(
            matches!(err, m365bk_store::Error::SnapshotNotFound { .. }),
            "{err}"
        );
        assert!(object.exists(), "a refused forget deletes nothing");
        let prefix = &snaps[1].id.to_string()[..10];
        let id = repo.resolve_snapshot_id(prefix).await.unwrap();
        assert_eq!(repo.forget_snapshots(&[id], true, &lock).await.unwrap(), 0);
        assert!(object.exists(), "a dry run deletes nothing");
        assert_eq!(repo.forget_snapshots(&[id], false, &lock).await.unwrap(), 1);
        assert!(!object.exists());
        assert!(repo.scan_snapshots().await.unwrap().unreadable.is_empty());
        let stats = catalog.sync(&repo).await.unwrap();
        assert_eq!((stats.removed, stats.unreadable.len()), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_and_rebuild_reproduce_rows_from_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, snaps) = repo_with_snapshots(dir.path()).await;
        let cat_dir = tempfile::tempdir().unwrap();
        let db = cat_dir.path().join("state/catalog.sqlite");
        let catalog = Catalog::open(&db).unwrap();

        // The worker's path: record right after commit.
        let items0 = repo.load_items(&snaps[0]).await.unwrap();
        catalog
            .record_snapshot(repo.id(), &snaps[0], &items0)
            .unwrap();

        let stats = catalog.sync(&repo).await.unwrap();
        assert_eq!((stats.added, stats.removed), (2, 0));
        let rows = catalog.snapshots(repo.id()).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            snaps.iter().map(|s| s.id).collect::<Vec<_>>()
        );
        assert_eq!(rows[2].resource_id, "carol");
        assert_eq!(rows[2].item_count, 4);
        assert_eq!(rows[2].tags, vec!["test".to_owned()]);
        assert_eq!(rows[2].time, snaps[2].time);

        let item_rows = catalog.items(&snaps[2].id).unwrap();
        let items2 = repo.load_items(&snaps[2]).await.unwrap();
        assert_eq!(item_rows.len(), 4);
        for (row, item) in item_rows.iter().zip(&items2) {
            assert_eq!(row.id, item.id);
            assert_eq!(row.path, item.path);
            assert_eq!(row.size, item.size);
            assert_eq!(row.modified, item.modified);
            assert_eq!(row.change_key, item.change_key);
            assert_eq!(row.content(), item.content);
        }
        assert_eq!(
            catalog.sync(&repo).await.unwrap(),
            m365bk_store::SyncStats {
                added: 0,
                removed: 0,
                unreadable: Vec::new(),
            }
        );

        // A snapshot removed from the repository disappears from the catalog.
        std::fs::remove_file(dir.path().join("snapshots").join(snaps[1].id.to_string())).unwrap();
        let stats = catalog.sync(&repo).await.unwrap();
        assert_eq!((stats.added, stats.removed), (0, 1));
        assert!(catalog.items(&snaps[1].id).unwrap().is_empty());
        let before_rows = catalog.snapshots(repo.id()).unwrap();
        let before_items: Vec<_> = before_rows
            .iter()
            .map(|r| catalog.items(&r.id).unwrap())
            .collect();

        // Rebuild in place, and from scratch in a new file: same rows.
        let stats = catalog.rebuild(&repo).await.unwrap();
        assert_eq!((stats.added, stats.removed), (2, 2));
        assert_eq!(catalog.snapshots(repo.id()).unwrap(), before_rows);
        let fresh = Catalog::open(&cat_dir.path().join("fresh.sqlite")).unwrap();
        fresh.rebuild(&repo).await.unwrap();
        assert_eq!(fresh.snapshots(repo.id()).unwrap(), before_rows);
        let fresh_items: Vec<_> = before_rows
            .iter()
            .map(|r| fresh.items(&r.id).unwrap())
            .collect();
        assert_eq!(fresh_items, before_items);
        assert_eq!(fresh.schema_version().unwrap(), 1);

        // WAL mode persists in the file.
        drop(catalog);
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn job_runs_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.sqlite")).unwrap();
        for (i, outcome) in ["ok", "refused", "partial"].iter().enumerate() {
            let start: chrono::DateTime<chrono::Utc> =
                format!("2026-11-2{}T01:00:00Z", i + 1).parse().unwrap();
            catalog
                .record_job_run(&JobRun {
                    job_id: "nightly-mail".into(),
                    service: "exchange".into(),
                    operation: "backup".into(),
                    started_at: start,
                    finished_at: start + chrono::Duration::minutes(5),
                    outcome: (*outcome).into(),
                    detail: serde_json::json!({"missing": ["Mail.Read"]}),
                })
                .unwrap();
        }
        let runs = catalog.job_runs(2).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].outcome, "partial");
        assert_eq!(runs[1].outcome, "refused");
        assert_eq!(runs[1].detail["missing"][0], "Mail.Read");
        assert_eq!(
            runs[0].finished_at - runs[0].started_at,
            chrono::Duration::minutes(5)
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.sqlite");
        drop(Catalog::open(&db).unwrap());
        rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        let err = Catalog::open(&db).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CatalogVersion {
                    found: 7,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("repair catalog"), "{err}");
    }
}

/// Index checkpoints: a session that uploads packs writes index files for them before its
/// commit, so a killed backup leaves its stored content indexed for the next one.
mod checkpoint {
    use super::*;
    use m365bk_store::IndexCheckpoint;
    use std::time::{Duration, Instant};

    fn index_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("index")).map_or(0, |d| {
            d.filter(|f| {
                !f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains('#')
            })
            .count()
        })
    }

    /// Stores four 12 MiB random contents (three 16 MiB packs sealed) with `checkpoint`, then
    /// waits up to 30 s for an index file. Returns the contents, whether an index file
    /// appeared before any commit, and whether a second session on a fresh repository handle
    /// holds the first content. The first session is still open (not committed) throughout.
    async fn store_uncommitted(checkpoint: IndexCheckpoint) -> (usize, bool, bool) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&loc(dir.path()), opts()).await.unwrap();
        let backup = repo.begin_backup().await.unwrap();
        backup.set_index_checkpoint(checkpoint);
        let mut contents = Vec::new();
        for seed in 0..4 {
            contents.push(store(&backup, &random_bytes(12 * MIB, 100 + seed), &[MIB]).await);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while (index_files(dir.path()) == 0 || backup.stats().packs_written < 2)
            && Instant::now() < deadline
        {
            if checkpoint == IndexCheckpoint::OFF && backup.stats().packs_written >= 2 {
                // Nothing will come: give the uploads a moment and stop waiting.
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let written = backup.stats().packs_written;
        assert!(written >= 2, "at least two packs uploaded: {written}");
        let files = index_files(dir.path());
        let fresh = Repository::open(&loc(dir.path()), Some(pass()))
            .await
            .unwrap();
        assert!(fresh.list_snapshots().await.unwrap().is_empty());
        let other = fresh.begin_backup().await.unwrap();
        let sees_first = other.contains(&contents[0]);
        if sees_first {
            // What the fresh handle's index lists is readable, byte for byte.
            let back = read_all(&fresh, &contents[0]).await.unwrap();
            assert_eq!(back, random_bytes(12 * MIB, 100));
        }
        other.finish().await.unwrap();
        backup.finish().await.unwrap();
        (files, files > 0, sees_first)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_past_n_packs_writes_an_index_file_before_its_commit() {
        let policy = IndexCheckpoint {
            packs: 2,
            interval: Duration::MAX,
        };
        let (files, indexed, sees_first) = store_uncommitted(policy).await;
        assert!(indexed, "an index file before the commit ({files})");
        assert!(sees_first, "a fresh handle sees the checkpointed blobs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interval_zero_indexes_after_every_pack_upload() {
        let policy = IndexCheckpoint {
            packs: 0,
            interval: Duration::ZERO,
        };
        let (files, indexed, sees_first) = store_uncommitted(policy).await;
        assert!(indexed && sees_first, "{files} index files");
    }

    /// The control: without checkpoints nothing is indexed before the commit, so the checks
    /// above can fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_checkpoints_nothing_is_indexed_before_the_commit() {
        let (files, indexed, sees_first) = store_uncommitted(IndexCheckpoint::OFF).await;
        assert!(!indexed, "{files} index files");
        assert!(!sees_first);
    }
}

#[test]
fn random_bytes_is_deterministic() {
    assert_eq!(random_bytes(100, 1), random_bytes(100, 1));
    assert_ne!(random_bytes(100, 1), random_bytes(100, 2));
}

/// Throughput smoke test, not run by default:
/// `cargo test -p m365bk-store --test integration throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints numbers"]
async fn throughput_smoke() {
    let total = 256 * MIB;
    let random = random_bytes(total, 42);
    let text: Vec<u8> = (0..total / 64)
        .flat_map(|i| {
            format!("{i:08} Subject: status report for the week, all fine {i:06}\n").into_bytes()
        })
        .take(total)
        .collect();
    for ((name, data), encrypted) in [("random", &random), ("text", &text)]
        .into_iter()
        .flat_map(|d| [(d, false), (d, true)])
    {
        let dir = tempfile::tempdir().unwrap();
        let init = if encrypted {
            opts()
        } else {
            InitOptions::no_encryption()
        };
        let repo = Repository::init(&loc(dir.path()), init).await.unwrap();
        let t = std::time::Instant::now();
        let backup = repo.begin_backup().await.unwrap();
        let c = store(&backup, data, &[MIB]).await;
        let stats = backup.finish().await.unwrap();
        let write = t.elapsed();
        let t = std::time::Instant::now();
        let backup = repo.begin_backup().await.unwrap();
        store(&backup, data, &[MIB]).await;
        backup.finish().await.unwrap();
        let dedup = t.elapsed();
        let t = std::time::Instant::now();
        let back = read_all(&repo, &c).await.unwrap();
        let read = t.elapsed();
        assert_eq!(back.len(), data.len());
        let mbps = |d: std::time::Duration| total as f64 / MIB as f64 / d.as_secs_f64();
        println!(
            "{name} ({}): {} MiB, {} chunks, stored {} MiB in {} packs; new write {:.0} MiB/s, \
             dedup rewrite {:.0} MiB/s, read {:.0} MiB/s",
            if encrypted { "encrypted" } else { "plaintext" },
            total / MIB,
            c.blobs.len(),
            stats.bytes_stored / MIB as u64,
            stats.packs_written,
            mbps(write),
            mbps(dedup),
            mbps(read)
        );
    }
}
