//! The repository conformance suite: one sequence of checks that every backend must pass, run
//! unchanged against a local directory, S3 (moto) and Azure Blob (Azurite).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use m365bk_store::{
    BackendOptions, CheckOptions, ContentRef, Encryption, Error, InitOptions, Item, KdfParams,
    Location, Repository, SecretString, Snapshot, SnapshotDraft,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use rand::{RngCore, SeedableRng};

const PASSPHRASE: &str = "conformance: four random words";
/// Cheap Argon2id parameters, for tests only (production: `KdfParams::RECOMMENDED`).
const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};
const MIB: usize = 1024 * 1024;

/// A backend under test: where the repository goes and how to reach it.
pub struct Target {
    /// For messages: `"local"`, `"s3 (moto)"`, `"azure (azurite)"`.
    pub name: &'static str,
    /// `repository.url`.
    pub location: String,
    /// Options, retries, credential files.
    pub backend: BackendOptions,
}

impl Target {
    /// The store as m365bk builds it, for the suite's direct object reads and writes.
    pub fn raw_store(&self) -> Arc<dyn ObjectStore> {
        Location::parse(&self.location)
            .unwrap()
            .open_store(&self.backend)
            .unwrap()
    }

    async fn open(&self) -> Repository {
        Repository::open_with_backend(&self.location, &self.backend, Some(pass()))
            .await
            .unwrap_or_else(|e| panic!("{}: open: {e}", self.name))
    }
}

fn pass() -> SecretString {
    SecretString::from(PASSPHRASE)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

/// The small real-file corpus (`$M365BK_TEST_CORPUS_SMALL`, built by scripts/build-corpus.py):
/// mail, office documents, PDFs, images.
fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let root = std::env::var_os("M365BK_TEST_CORPUS_SMALL")
        .map(PathBuf::from)
        .expect("$M365BK_TEST_CORPUS_SMALL is not set: run scripts/test.sh (it builds the corpus and sets it)");
    fn walk(dir: &FsPath, root: &FsPath, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("users"), &root, &mut files);
    assert!(
        files.len() >= 10,
        "the small corpus at {} has only {} files: rebuild it with scripts/build-corpus.py --small",
        root.display(),
        files.len()
    );
    files
}

fn item(path: &str, content: ContentRef) -> Item {
    Item {
        kind: "file".into(),
        id: path.into(),
        parent_id: None,
        path: path.into(),
        change_key: None,
        size: content.size,
        modified: None,
        metadata: serde_json::json!({}),
        content: Some(content),
    }
}

fn draft(resource: &str, items: Vec<Item>) -> SnapshotDraft {
    SnapshotDraft {
        service: "onedrive".into(),
        resource_id: resource.into(),
        items,
        ..Default::default()
    }
}

async fn read_all(repo: &Repository, content: &ContentRef) -> Result<Vec<u8>, Error> {
    let parts: Vec<Bytes> = repo.read_content(content).try_collect().await?;
    Ok(parts.concat())
}

async fn write_content(backup: &m365bk_store::BackupWriter, data: &[u8]) -> ContentRef {
    let mut w = backup.content_writer();
    // Uneven writes, as downloads arrive.
    for part in data.chunks(100_003) {
        w.write(part).await.unwrap();
    }
    w.finish().await.unwrap()
}

/// Every item of `snapshot` reads back equal to `expected` (path → bytes).
async fn assert_restores(
    name: &str,
    repo: &Repository,
    snapshot: &Snapshot,
    expected: &[(String, Vec<u8>)],
) {
    let items = repo.load_items(snapshot).await.unwrap();
    assert_eq!(items.len(), expected.len(), "{name}: item count");
    for (item, (path, bytes)) in items.iter().zip(expected) {
        assert_eq!(&item.path, path, "{name}: item order");
        let got = read_all(repo, item.content.as_ref().unwrap())
            .await
            .unwrap();
        assert!(
            got == *bytes,
            "{name}: {path} restored {} bytes that differ from the original {} bytes",
            got.len(),
            bytes.len()
        );
    }
}

/// The backend must reject `PutMode::Create` on an existing key, or the format's create-only
/// writes (config, key slots, locks) would be silently unsafe and this suite would pass
/// vacuously.
pub async fn self_check_conditional_create(t: &Target) {
    let store = t.raw_store();
    let key = Path::from("conformance-self-check");
    store
        .put_opts(
            &key,
            PutPayload::from_static(b"first"),
            PutMode::Create.into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: first conditional create failed: {e}", t.name));
    match store
        .put_opts(&key, PutPayload::from_static(b"second"), PutMode::Create.into())
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        other => panic!(
            "{}: PutMode::Create on an existing key must fail with AlreadyExists, got {other:?}. This server ignores conditional writes: m365bk cannot run on it safely, and the suite's results would mean nothing",
            t.name
        ),
    }
    let kept = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        &kept[..],
        b"first",
        "{}: the losing create changed the object",
        t.name
    );
    store.delete(&key).await.unwrap();
}

/// The whole suite, in order (each step builds on the previous one's repository).
pub async fn run(t: &Target) {
    let name = t.name;
    self_check_conditional_create(t).await;

    // init (encrypted), and a second init refused without adding a key slot.
    let opts = InitOptions {
        encryption: Encryption::Passphrase(pass()),
        kdf: TEST_KDF,
        cipher: Default::default(),
    };
    let repo = Repository::init_with_backend(&t.location, &t.backend, opts.clone())
        .await
        .unwrap_or_else(|e| panic!("{name}: init: {e}"));
    let err = Repository::init_with_backend(&t.location, &t.backend, opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RepositoryExists { .. }),
        "{name}: {err}"
    );
    let raw = t.raw_store();
    let key_slots: Vec<_> = raw
        .list(Some(&Path::from("keys")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        key_slots.len(),
        1,
        "{name}: a refused init adds no key slot"
    );

    // open: right, wrong and missing passphrase.
    let err = Repository::open_with_backend(
        &t.location,
        &t.backend,
        Some(SecretString::from("not the passphrase")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::WrongPassphrase { .. }),
        "{name}: {err}"
    );
    let err = Repository::open_with_backend(&t.location, &t.backend, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PassphraseRequired { .. }),
        "{name}: {err}"
    );
    assert_eq!(t.open().await.id(), repo.id(), "{name}: same repository");

    // Backup of the real corpus, then the same corpus again plus one new file: only the new
    // file's bytes are stored the second time.
    let files = corpus_files();
    let corpus_bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let backup = repo.begin_backup().await.unwrap();
    let mut items = Vec::new();
    for (path, bytes) in &files {
        items.push(item(path, write_content(&backup, bytes).await));
    }
    let first = backup.commit_snapshot(draft("adele", items)).await.unwrap();
    let stats = backup.finish().await.unwrap();
    assert!(stats.bytes_in >= corpus_bytes as u64, "{name}: {stats:?}");
    // The pack(s) of this first backup: later damage goes here, where no other copy exists.
    let first_packs: Vec<Path> = raw
        .list(Some(&Path::from("data")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    assert!(
        stats.bytes_new > 0 && stats.packs_written > 0,
        "{name}: {stats:?}"
    );

    let repo = t.open().await;
    let backup = repo.begin_backup().await.unwrap();
    let mut items = Vec::new();
    for (path, bytes) in &files {
        items.push(item(path, write_content(&backup, bytes).await));
    }
    assert_eq!(
        backup.stats().bytes_new,
        0,
        "{name}: content already in the repository is not stored again"
    );
    let fresh = random_bytes(3 * MIB / 2, 7);
    items.push(item("new.bin", write_content(&backup, &fresh).await));
    let second = backup.commit_snapshot(draft("adele", items)).await.unwrap();
    let stats = backup.finish().await.unwrap();
    assert!(
        stats.bytes_new >= fresh.len() as u64 && stats.bytes_new < 2 * fresh.len() as u64,
        "{name}: only the new file is new: {stats:?}"
    );

    // Reopen: list, restore byte-identical.
    let repo = t.open().await;
    let snapshots = repo.list_snapshots().await.unwrap();
    let ids: Vec<_> = snapshots.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 2, "{name}: {ids:?}");
    assert!(
        ids.contains(&first.id) && ids.contains(&second.id),
        "{name}"
    );
    let found = repo.find_snapshot(&second.id.to_hex()[..8]).await.unwrap();
    assert_eq!(found.id, second.id, "{name}");
    assert_restores(name, &repo, &first, &files).await;
    let mut with_new = files.clone();
    with_new.push(("new.bin".into(), fresh.clone()));
    assert_restores(name, &repo, &second, &with_new).await;

    // check, structure and data.
    let report = repo.check(CheckOptions::default()).await.unwrap();
    assert!(report.is_ok(), "{name}: {:#?}", report.errors);
    assert_eq!(report.snapshots_checked, 2, "{name}");
    let report = repo.check(CheckOptions::read_data()).await.unwrap();
    assert!(report.is_ok(), "{name}: {:#?}", report.errors);
    assert!(report.packs_checked > 0, "{name}");

    ranged_reads(t).await;
    two_writers(t, &files).await;
    damaged_pack_is_found(t, &first_packs[0]).await;
}

/// Ranged reads return exactly the bytes of the whole object at those offsets.
async fn ranged_reads(t: &Target) {
    let store = t.raw_store();
    let packs: Vec<_> = store
        .list(Some(&Path::from("data")))
        .try_collect()
        .await
        .unwrap();
    let pack = packs.iter().max_by_key(|m| m.size).expect("a pack");
    let whole = store
        .get(&pack.location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len() as u64, pack.size, "{}", t.name);
    let len = whole.len() as u64;
    let ranges = [0..8, len / 2..len / 2 + 1000, len - 17..len, 1..2];
    for r in &ranges {
        let got = store.get_range(&pack.location, r.clone()).await.unwrap();
        assert_eq!(
            &got[..],
            &whole[r.start as usize..r.end as usize],
            "{}: range {r:?}",
            t.name
        );
    }
    let got = store.get_ranges(&pack.location, &ranges).await.unwrap();
    for (r, g) in ranges.iter().zip(got) {
        assert_eq!(
            &g[..],
            &whole[r.start as usize..r.end as usize],
            "{}",
            t.name
        );
    }
}

/// Two processes' worth of writers (separate handles, separate sessions) back up into the
/// repository at once, sharing some content: both snapshots commit, both restore, check is
/// clean.
async fn two_writers(t: &Target, files: &[(String, Vec<u8>)]) {
    let name = t.name;
    let (a, b) = (t.open().await, t.open().await);
    let shared = random_bytes(2 * MIB, 100);
    let own_a = random_bytes(3 * MIB, 101);
    let own_b = random_bytes(3 * MIB, 102);
    let run = |repo: Repository, resource: &'static str, own: Vec<u8>, shared: Vec<u8>| async move {
        let backup = repo.begin_backup().await.unwrap();
        let s = write_content(&backup, &shared).await;
        let o = write_content(&backup, &own).await;
        let c = write_content(&backup, &files[0].1).await;
        let snap = backup
            .commit_snapshot(draft(
                resource,
                vec![
                    item("shared.bin", s),
                    item("own.bin", o),
                    item(&files[0].0, c),
                ],
            ))
            .await
            .unwrap();
        backup.finish().await.unwrap();
        snap
    };
    let (snap_a, snap_b) = tokio::join!(
        run(a, "bob", own_a.clone(), shared.clone()),
        run(b, "carol", own_b.clone(), shared.clone())
    );
    let repo = t.open().await;
    let ids: Vec<_> = repo
        .list_snapshots()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids.len(), 4, "{name}: {ids:?}");
    assert!(
        ids.contains(&snap_a.id) && ids.contains(&snap_b.id),
        "{name}"
    );
    for (snap, own) in [(&snap_a, &own_a), (&snap_b, &own_b)] {
        let expected = vec![
            ("shared.bin".to_string(), shared.clone()),
            ("own.bin".to_string(), own.clone()),
            files[0].clone(),
        ];
        assert_restores(name, &repo, snap, &expected).await;
    }
    let report = repo.check(CheckOptions::read_data()).await.unwrap();
    assert!(
        report.is_ok(),
        "{name}: after two writers: {:#?}",
        report.errors
    );
}

/// A byte flipped in `pack` (one that holds the only copy of its blobs) on the backend: reading
/// an affected item fails naming the pack, and `check --read-data` reports that pack and the
/// snapshots it hurts.
async fn damaged_pack_is_found(t: &Target, pack: &Path) {
    let name = t.name;
    let store = t.raw_store();
    let mut bytes = store
        .get(pack)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    // Inside the first blob (the 8-byte pack header comes first).
    bytes[8 + 100] ^= 0x01;
    store
        .put_opts(pack, PutPayload::from(bytes), PutMode::Overwrite.into())
        .await
        .unwrap();
    let pack_name = pack.filename().unwrap().to_owned();

    let repo = t.open().await;
    let report = repo.check(CheckOptions::read_data()).await.unwrap();
    assert_eq!(report.errors.len(), 1, "{name}: {:#?}", report.errors);
    let problem = &report.errors[0];
    assert!(
        problem.object.ends_with(&pack_name),
        "{name}: {}",
        problem.object
    );
    assert!(!problem.affected_snapshots.is_empty(), "{name}");

    // Reading an affected snapshot's content fails by name.
    let mut named = false;
    for id in &problem.affected_snapshots {
        let snap = repo.find_snapshot(&id.to_hex()).await.unwrap();
        let Ok(items) = repo.load_items(&snap).await else {
            named = true; // the item list itself was in the damaged blob
            continue;
        };
        for it in items {
            if let Err(e) = read_all(&repo, it.content.as_ref().unwrap()).await {
                assert!(
                    matches!(e, Error::CorruptObject { kind: "pack", .. }),
                    "{name}: {e}"
                );
                assert!(e.to_string().contains(&pack_name), "{name}: {e}");
                named = true;
            }
        }
    }
    assert!(named, "{name}: some affected item fails to read");
}
