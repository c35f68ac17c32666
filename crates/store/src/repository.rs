//! Opening and reading a repository.

use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::backup::BackupWriter;
use crate::blob;
use crate::chunker::Chunker;
use crate::config::{RepoConfig, CONFIG_NAME};
use crate::crypto::{Cipher, SealingKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::format::{self, Codec, ObjectKind, ENVELOPE_PLAIN};
use crate::id::{BlobId, KeyId, SnapshotId};
use crate::index::{Index, Located};
use crate::index_cache::CacheLocation;
use crate::keys::{self, KdfParams};
use crate::location::{BackendOptions, Location};
use crate::lock::{LockKind, LockOptions};
use crate::pack::pack_path;
use crate::snapshot::{self, ContentRef, Item, Snapshot};

/// Reads (runs of blobs) fetched ahead of the consumer in [`Repository::read_content`].
const READ_AHEAD_RUNS: usize = 4;
/// Largest run of adjacent blobs [`Repository::read_content`] fetches with one ranged read:
/// one GET instead of about four (chunks average 256 KiB), while the read-ahead holds no more
/// than the four largest chunks did when blobs were read one by one. 4 MiB runs made no
/// difference to the restore time of the vs-restic corpus but raised its peak RSS from 70 to
/// 101-113 MiB.
pub(crate) const MAX_RUN_BYTES: u64 = 1024 * 1024;
/// Snapshot or index objects fetched concurrently when listing.
const LIST_CONCURRENCY: usize = 8;

/// A backup repository on an object store.
///
/// Cheap to clone (an `Arc` inside); clones share the in-memory index.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<RepoInner>,
}

pub(crate) struct RepoInner {
    pub location: String,
    pub store: Arc<dyn ObjectStore>,
    pub config: RepoConfig,
    /// How objects are written and read: plaintext, or sealed with the master key.
    pub codec: Codec,
    /// The master key, to wrap in new key slots (`None`: not encrypted).
    pub master: Option<Zeroizing<[u8; KEY_LEN]>>,
    /// The key slot the passphrase opened.
    pub current_key: Mutex<Option<KeyId>>,
    /// Blob-id key.
    pub key: Zeroizing<[u8; KEY_LEN]>,
    pub chunker: Chunker,
    /// Index files merged so far (by this process: loaded or written).
    pub index: RwLock<Index>,
    /// Held by whoever adds packs to the index or rewrites its table (refresh, commit).
    pub(crate) index_refresh: tokio::sync::Mutex<()>,
    /// Where the index keeps its on-disk table ([`Repository::set_index_cache_dir`]).
    pub(crate) index_location: Mutex<CacheLocation>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.inner.location)
            .field("id", &self.inner.config.id)
            .field("encrypted", &self.inner.codec.is_sealed())
            .finish_non_exhaustive()
    }
}

/// Whether and how a new repository is encrypted.
#[derive(Clone, Debug)]
pub enum Encryption {
    /// Every object sealed with XChaCha20-Poly1305 under a random master key, held in a key
    /// slot opened by this passphrase.
    Passphrase(SecretString),
    /// Plaintext: anyone who can read the repository can read the backups. Only when asked
    /// for explicitly (`m365bk init --no-encryption`).
    None,
}

/// How [`Repository::init`] makes a repository.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Encrypted (with the first key slot's passphrase) or not.
    pub encryption: Encryption,
    /// Argon2id cost of the first key slot (ignored without encryption).
    pub kdf: KdfParams,
    /// The cipher objects are sealed with (ignored without encryption); default XAES-256-GCM.
    pub cipher: Cipher,
}

impl InitOptions {
    /// Encrypted, first key slot opened by `passphrase`, recommended key derivation cost.
    pub fn passphrase(passphrase: SecretString) -> Self {
        InitOptions {
            encryption: Encryption::Passphrase(passphrase),
            kdf: KdfParams::RECOMMENDED,
            cipher: Cipher::default(),
        }
    }

    /// Not encrypted.
    pub fn no_encryption() -> Self {
        InitOptions {
            encryption: Encryption::None,
            kdf: KdfParams::RECOMMENDED,
            cipher: Cipher::default(),
        }
    }
}

/// Sizes of what is in the repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoStats {
    /// Pack files under `data/`.
    pub pack_count: u64,
    /// Bytes in pack files.
    pub pack_bytes: u64,
    /// Index files under `index/`.
    pub index_count: u64,
    /// Bytes in index files.
    pub index_bytes: u64,
    /// Snapshot objects under `snapshots/`.
    pub snapshot_count: u64,
    /// Distinct blobs listed in the index.
    pub blob_count: u64,
    /// Bytes in all objects, `config` included.
    pub total_bytes: u64,
}

#[cfg(unix)]
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

impl Repository {
    /// Creates a repository at `location` (see [`Location::parse`] for the forms: a
    /// filesystem path, `file:///abs/path`, `s3://bucket/prefix`, `az://container/prefix`,
    /// `gs://bucket/prefix`), with default [`BackendOptions`] (cloud settings and secrets from
    /// the standard environment variables only). Creates a local directory if needed, never a
    /// bucket or container. Writes a `config` object with a fresh repository id, blob-id key
    /// and chunker seed; with [`Encryption::Passphrase`], first a key slot holding a fresh
    /// random master key, and the `config` sealed with it.
    ///
    /// # Errors
    /// [`Error::RepositoryExists`] if a `config` object is already there (nothing is written
    /// then), [`Error::UnsupportedLocation`], [`Error::BackendConfig`],
    /// [`Error::ContainerNotFound`], [`Error::AccessDenied`], [`Error::Io`] if the directory
    /// cannot be created, [`Error::InvalidKdfParams`], [`Error::EmptyPassphrase`],
    /// [`Error::Backend`].
    pub async fn init(location: &str, opts: InitOptions) -> Result<Repository> {
        Self::init_with_backend(location, &BackendOptions::default(), opts).await
    }

    /// Like [`Repository::init`], with settings for cloud backends (options, retries,
    /// credential files).
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub async fn init_with_backend(
        location: &str,
        backend: &BackendOptions,
        opts: InitOptions,
    ) -> Result<Repository> {
        let parsed = Location::parse(location)?;
        if let Some(path) = parsed.local_path() {
            let existed = path.is_dir();
            std::fs::create_dir_all(path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
            if !existed {
                // Make the new directory's entry durable; object_store fsyncs from here down.
                if let Some(parent) = path.parent() {
                    sync_dir(parent).map_err(|source| Error::Io {
                        path: parent.display().to_string(),
                        source,
                    })?;
                }
            }
        }
        let store = parsed.open_store(backend)?;
        Self::init_in(
            store,
            &shown_location(location, &parsed),
            Some(&parsed),
            opts,
        )
        .await
    }

    /// Like [`Repository::init`], on any object store (`location` is only used in messages).
    ///
    /// The store must support [`PutMode::Create`].
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub async fn init_with_store(
        store: Arc<dyn ObjectStore>,
        location: &str,
        opts: InitOptions,
    ) -> Result<Repository> {
        Self::init_in(store, location, None, opts).await
    }

    async fn init_in(
        store: Arc<dyn ObjectStore>,
        location: &str,
        parsed: Option<&Location>,
        opts: InitOptions,
    ) -> Result<Repository> {
        let config_path = Path::from(CONFIG_NAME);
        // A missing bucket would otherwise fail later, at the first write, as "not found".
        probe_container(&*store, location, parsed).await?;
        let exists = || Error::RepositoryExists {
            location: location.to_owned(),
        };
        // Checked first so that init never adds a key slot to an existing repository.
        match store.head(&config_path).await {
            Ok(_) => return Err(exists()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::backend("stat", CONFIG_NAME)(e)),
        }
        let (codec, master, current) = match opts.encryption {
            Encryption::None => (Codec::plain(format::version_for(None)), None, None),
            Encryption::Passphrase(passphrase) => {
                let master = keys::generate_master_key();
                let id = keys::add_slot(&*store, master.clone(), passphrase, opts.kdf).await?;
                (
                    Codec::sealed_version(
                        SealingKey::with_cipher(&master, opts.cipher),
                        format::version_for(Some(opts.cipher)),
                    ),
                    Some(master),
                    Some(id),
                )
            }
        };
        let mut config = RepoConfig::generate(codec.key().map(SealingKey::cipher));
        config.version = u32::from(codec.version());
        let bytes = Bytes::from(config.encode(&codec)?);
        config.blob_id.key.zeroize();
        match store
            .put_opts(
                &config_path,
                PutPayload::from(bytes.clone()),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Another init won the race: take back the key slot made for this one.
                if let Some(id) = current {
                    let _ = store.delete(&keys::key_path(&id)).await;
                }
                return Err(exists());
            }
            Err(e) => return Err(Error::backend("write", CONFIG_NAME)(e)),
        }
        tracing::info!(location, repository = %config.id, encryption = %config.encryption, "initialised repository");
        drop(config);
        let (config, key) = RepoConfig::decode(&bytes, &codec)?;
        Ok(Self::from_parts(
            store, location, codec, config, key, master, current,
        ))
    }

    /// Opens the repository at `location` (see [`Repository::init`] for the forms) with the
    /// passphrase of one of its key slots (`None` for a repository made without encryption),
    /// with default [`BackendOptions`]. Repositories of format version 1 (plaintext) open too.
    ///
    /// # Errors
    /// [`Error::RepositoryNotFound`] if there is no `config` object (or no directory),
    /// [`Error::ContainerNotFound`] if the bucket or container does not exist,
    /// [`Error::PassphraseRequired`] if it is encrypted and `passphrase` is `None`,
    /// [`Error::WrongPassphrase`] if the passphrase opens no key slot (nothing is written),
    /// [`Error::NoKeySlot`], [`Error::UnsupportedVersion`] if it was made by a newer m365bk,
    /// [`Error::CorruptObject`] if `config` is damaged, [`Error::UnsupportedLocation`],
    /// [`Error::BackendConfig`], [`Error::AccessDenied`], [`Error::Backend`].
    pub async fn open(location: &str, passphrase: Option<SecretString>) -> Result<Repository> {
        Self::open_with_backend(location, &BackendOptions::default(), passphrase).await
    }

    /// Like [`Repository::open`], with settings for cloud backends (options, retries,
    /// credential files).
    ///
    /// # Errors
    /// As [`Repository::open`].
    pub async fn open_with_backend(
        location: &str,
        backend: &BackendOptions,
        passphrase: Option<SecretString>,
    ) -> Result<Repository> {
        let parsed = Location::parse(location)?;
        let shown = shown_location(location, &parsed);
        if let Some(path) = parsed.local_path() {
            if !path.is_dir() {
                return Err(Error::RepositoryNotFound { location: shown });
            }
        }
        let store = parsed.open_store(backend)?;
        Self::open_in(store, &shown, Some(&parsed), passphrase).await
    }

    /// Like [`Repository::open`], on any object store (`location` is only used in messages).
    ///
    /// # Errors
    /// As [`Repository::open`].
    pub async fn open_with_store(
        store: Arc<dyn ObjectStore>,
        location: &str,
        passphrase: Option<SecretString>,
    ) -> Result<Repository> {
        Self::open_in(store, location, None, passphrase).await
    }

    async fn open_in(
        store: Arc<dyn ObjectStore>,
        location: &str,
        parsed: Option<&Location>,
        passphrase: Option<SecretString>,
    ) -> Result<Repository> {
        let bytes = match store.get(&Path::from(CONFIG_NAME)).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(Error::backend("read", CONFIG_NAME))?,
            Err(object_store::Error::NotFound { .. }) => {
                probe_container(&*store, location, parsed).await?;
                return Err(Error::RepositoryNotFound {
                    location: location.to_owned(),
                });
            }
            Err(e) => return Err(Error::backend("read", CONFIG_NAME)(e)),
        };
        let header = format::read_header(ObjectKind::Config, CONFIG_NAME, &bytes)?;
        if header[5] == ENVELOPE_PLAIN {
            if passphrase.is_some() {
                tracing::debug!(
                    location,
                    "the repository is not encrypted: no passphrase needed"
                );
            }
            let codec = Codec::plain(header[4]);
            let (config, key) = RepoConfig::decode(&bytes, &codec)?;
            return Ok(Self::from_parts(
                store, location, codec, config, key, None, None,
            ));
        }
        // `read_header` accepts only known envelopes, so a sealed one names its cipher.
        let cipher = format::envelope_cipher(header[5]).ok_or_else(|| Error::Internal {
            detail: format!("envelope {} passed the header check", header[5]),
        })?;
        let version = header[4];
        let passphrase = passphrase.ok_or_else(|| Error::PassphraseRequired {
            location: location.to_owned(),
        })?;
        let slots = keys::load_slots(&*store).await?;
        if slots.is_empty() {
            return Err(Error::NoKeySlot {
                location: location.to_owned(),
            });
        }
        // One Argon2id derivation per slot tried, off the async threads.
        let opened = tokio::task::spawn_blocking(move || {
            let mut config_error = None;
            for slot in &slots {
                let Some(master) = slot.unlock(&passphrase) else {
                    continue;
                };
                let codec = Codec::sealed_version(SealingKey::with_cipher(&master, cipher), version);
                match RepoConfig::decode(&bytes, &codec) {
                    Ok((config, key)) => return Ok(Some((slot.id, master, codec, config, key))),
                    Err(e) => {
                        // A slot left by a concurrent init that lost, or a damaged config.
                        tracing::warn!(key = %slot.id.short(), error = %e, "the passphrase opens this key slot, but its master key does not open config");
                        config_error = Some(e);
                    }
                }
            }
            config_error.map_or(Ok(None), Err)
        })
        .await
        .map_err(Error::join)??;
        let Some((id, master, codec, config, key)) = opened else {
            return Err(Error::WrongPassphrase {
                location: location.to_owned(),
            });
        };
        tracing::debug!(location, key = %id.short(), "repository unlocked");
        Ok(Self::from_parts(
            store,
            location,
            codec,
            config,
            key,
            Some(master),
            Some(id),
        ))
    }

    fn from_parts(
        store: Arc<dyn ObjectStore>,
        location: &str,
        codec: Codec,
        config: RepoConfig,
        key: Zeroizing<[u8; KEY_LEN]>,
        master: Option<Zeroizing<[u8; KEY_LEN]>>,
        current_key: Option<KeyId>,
    ) -> Repository {
        Repository {
            inner: Arc::new(RepoInner {
                location: location.to_owned(),
                store,
                chunker: Chunker::new(&config.chunker),
                config,
                codec,
                master,
                current_key: Mutex::new(current_key),
                key,
                index: RwLock::new(Index::default()),
                index_refresh: tokio::sync::Mutex::new(()),
                index_location: Mutex::new(CacheLocation::Temporary),
            }),
        }
    }

    /// Repository id, 64 lowercase hex characters.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// The location given to `init`/`open`: a local directory as its absolute path, a cloud
    /// location as given.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Starts a backup session: takes a shared backup lock (not waiting if a prune holds the
    /// exclusive one), then loads every index file not yet in memory, so content already in
    /// the repository is not stored again.
    ///
    /// # Errors
    /// [`Error::RepositoryLocked`] while a prune runs, [`Error::CorruptObject`] for a damaged
    /// index file, [`Error::Backend`].
    pub async fn begin_backup(&self) -> Result<BackupWriter> {
        self.begin_backup_with(&LockOptions::default()).await
    }

    /// [`Repository::begin_backup`], waiting for the lock and refreshing it as `lock` says.
    ///
    /// # Errors
    /// As [`Repository::begin_backup`].
    pub async fn begin_backup_with(&self, lock: &LockOptions) -> Result<BackupWriter> {
        let held = self.lock(LockKind::Backup, lock).await?;
        self.inner.refresh_index().await?;
        Ok(BackupWriter::new(self.clone(), held))
    }

    /// All snapshots, oldest first (ties broken by id).
    ///
    /// # Errors
    /// [`Error::CorruptObject`] if a snapshot object is damaged, [`Error::Backend`].
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        let ids = self.inner.snapshot_ids().await?;
        let mut snapshots: Vec<Snapshot> = futures::stream::iter(ids)
            .map(|id| self.inner.load_snapshot(id))
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        snapshots.sort_by_key(|s| (s.time, s.id));
        Ok(snapshots)
    }

    /// All snapshots that can be read, oldest first, and those whose object is damaged
    /// ([`Error::CorruptObject`]: a wrong seal, a truncated or unparsable object), which
    /// [`Repository::list_snapshots`] would fail on. Backups, `forget` and the catalog go on with the readable ones and name
    /// the others; `prune` refuses while there are any (it cannot tell what they refer to).
    ///
    /// # Errors
    /// [`Error::Backend`] (a listing or read that failed, not a damaged object),
    /// [`Error::UnsupportedVersion`] (a snapshot written by a newer m365bk: upgrade).
    pub async fn scan_snapshots(&self) -> Result<SnapshotScan> {
        let ids = self.inner.snapshot_ids().await?;
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> = futures::stream::iter(ids)
            .map(|id| async move { (id, self.inner.load_snapshot(id).await) })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        let mut scan = SnapshotScan::default();
        for (id, result) in loaded {
            match result {
                Ok(s) => scan.snapshots.push(s),
                // Deleted between the listing and the read (a concurrent forget).
                Err(Error::SnapshotNotFound { .. }) => {}
                // Damaged (a wrong seal, truncated, unparsable). A newer format version is an
                // error instead: the fix is to upgrade m365bk, not to leave the snapshot out.
                Err(Error::CorruptObject { detail, .. }) => {
                    tracing::warn!(snapshot = %id, %detail, "snapshot object is corrupt; left out");
                    scan.unreadable.push(UnreadableSnapshot {
                        id,
                        error: format!("its object is corrupt: {detail}"),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        scan.snapshots.sort_by_key(|s| (s.time, s.id));
        scan.unreadable.sort_by_key(|u| u.id);
        Ok(scan)
    }

    /// The id of the snapshot object whose id is `id_or_prefix` (full, or a unique prefix of
    /// at least 4 hex digits), without reading the object: a damaged snapshot can be named
    /// (to `forget` it) even though it cannot be read.
    ///
    /// # Errors
    /// [`Error::InvalidId`], [`Error::SnapshotNotFound`], [`Error::AmbiguousSnapshotId`],
    /// [`Error::Backend`].
    pub async fn resolve_snapshot_id(&self, id_or_prefix: &str) -> Result<SnapshotId> {
        let wanted = snapshot_prefix(id_or_prefix)?;
        let matches: Vec<SnapshotId> = self
            .inner
            .snapshot_ids()
            .await?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [] => Err(Error::SnapshotNotFound { id: wanted }),
            [id] => Ok(*id),
            _ => Err(Error::AmbiguousSnapshotId {
                prefix: wanted,
                matches: matches.len(),
            }),
        }
    }

    /// Finds a snapshot by full id or unique prefix of at least 4 hex digits.
    ///
    /// # Errors
    /// [`Error::InvalidId`] for non-hex or too short input, [`Error::SnapshotNotFound`],
    /// [`Error::AmbiguousSnapshotId`], [`Error::CorruptObject`], [`Error::Backend`].
    pub async fn find_snapshot(&self, id_or_prefix: &str) -> Result<Snapshot> {
        let wanted = snapshot_prefix(id_or_prefix)?;
        if wanted.len() == 64 {
            return self.inner.load_snapshot(wanted.parse()?).await;
        }
        let id = self.resolve_snapshot_id(id_or_prefix).await?;
        self.inner.load_snapshot(id).await
    }

    /// The items of a snapshot, in the order they were committed.
    ///
    /// # Errors
    /// As [`Repository::read_content`], and [`Error::CorruptObject`] if the item list does not
    /// parse.
    pub async fn load_items(&self, snapshot: &Snapshot) -> Result<Vec<Item>> {
        let mut parser = ItemParser::new(snapshot);
        let mut stream = std::pin::pin!(self.read_content(&snapshot.tree));
        while let Some(chunk) = stream.try_next().await? {
            parser.push(&chunk)?;
        }
        parser.finish()
    }

    /// Streams the bytes of `content` blob by blob (each at most the maximum chunk size,
    /// 2 MiB), verifying each blob's keyed hash. Blobs stored back to back in one pack are
    /// fetched with one ranged read of up to 1 MiB (a run), and a few runs are fetched ahead;
    /// the blobs of a run are decoded in parallel on the compute pool.
    ///
    /// # Errors
    /// Each item is an error if the blob cannot be produced: [`Error::BlobNotIndexed`],
    /// [`Error::MissingObject`] (pack gone), [`Error::CorruptObject`] naming the pack (hash
    /// mismatch, truncation), [`Error::Backend`]. The stream ends after the first error.
    pub fn read_content(
        &self,
        content: &ContentRef,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let inner = self.inner.clone();
        let ids: Arc<[BlobId]> = content.blobs.clone().into();
        futures::stream::unfold(0usize, {
            let inner = inner.clone();
            move |pos| {
                let inner = inner.clone();
                let ids = ids.clone();
                async move {
                    if pos >= ids.len() {
                        return None;
                    }
                    match inner.locate_run(&ids[pos..]).await {
                        Ok(run) => {
                            let next = pos + run.len();
                            Some((Ok(run), next))
                        }
                        Err(e) => Some((Err(e), ids.len())),
                    }
                }
            }
        })
        .map(move |run| {
            let inner = inner.clone();
            async move { inner.fetch_run(run?).await }
        })
        .buffered(READ_AHEAD_RUNS)
        .flat_map(|run| {
            futures::stream::iter(match run {
                Ok(blobs) => blobs.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        })
    }

    /// Counts and sizes the repository's objects.
    ///
    /// # Errors
    /// [`Error::Backend`], or [`Error::CorruptObject`] for a damaged index file.
    pub async fn stats(&self) -> Result<RepoStats> {
        self.inner.refresh_index().await?;
        let mut stats = RepoStats::default();
        let mut objects = self.inner.store.list(None);
        while let Some(meta) = objects
            .try_next()
            .await
            .map_err(Error::backend("list", "/"))?
        {
            stats.total_bytes += meta.size;
            match meta.location.parts().next().as_ref().map(|p| p.as_ref()) {
                Some("data") => {
                    stats.pack_count += 1;
                    stats.pack_bytes += meta.size;
                }
                Some("index") => {
                    stats.index_count += 1;
                    stats.index_bytes += meta.size;
                }
                Some("snapshots") => stats.snapshot_count += 1,
                _ => {}
            }
        }
        stats.blob_count = self.inner.index.read().expect("index lock").blob_count() as u64;
        Ok(stats)
    }
}

impl RepoInner {
    /// Reads a whole object; `NotFound` becomes [`Error::MissingObject`].
    pub(crate) async fn get(&self, kind: &'static str, path: &Path) -> Result<Bytes> {
        let missing = || Error::MissingObject {
            kind,
            name: path.to_string(),
        };
        match self.store.get(path).await {
            Ok(r) => r.bytes().await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => missing(),
                e => Error::backend("read", path.to_string())(e),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(missing()),
            Err(e) => Err(Error::backend("read", path.to_string())(e)),
        }
    }

    /// Writes a new content-addressed object. An existing object of that name has the same
    /// content, so `AlreadyExists` counts as success.
    pub(crate) async fn put_new(&self, path: &Path, payload: PutPayload) -> Result<()> {
        match self
            .store
            .put_opts(path, payload, PutMode::Create.into())
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(Error::backend("write", path.to_string())(e)),
        }
    }

    /// Lists `prefix/` and returns each object's file name and size.
    pub(crate) async fn list_names(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix_path = Path::from(prefix);
        self.store
            .list(Some(&prefix_path))
            .map_ok(|meta| {
                let name = meta.location.filename().unwrap_or_default().to_owned();
                (name, meta.size)
            })
            .try_collect()
            .await
            .map_err(Error::backend("list", format!("{prefix}/")))
    }

    pub(crate) async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self
            .list_names("snapshots")
            .await?
            .into_iter()
            .filter_map(|(name, _)| match name.parse() {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(object = %format!("snapshots/{name}"), "ignoring object with a non-id name");
                    None
                }
            })
            .collect())
    }

    pub(crate) async fn load_snapshot(&self, id: SnapshotId) -> Result<Snapshot> {
        let bytes = match self.get("snapshot", &snapshot::snapshot_path(&id)).await {
            Ok(b) => b,
            Err(Error::MissingObject { .. }) => {
                return Err(Error::SnapshotNotFound { id: id.to_hex() })
            }
            Err(e) => return Err(e),
        };
        snapshot::decode_snapshot(&self.codec, &id, &bytes)
    }

    /// Merges index files that are not in the index yet (see `index.rs`,
    /// `RepoInner::refresh_index_locked`).
    ///
    /// # Errors
    /// The first damaged or unreadable index file.
    pub(crate) async fn refresh_index(&self) -> Result<()> {
        let _one_at_a_time = self.index_refresh.lock().await;
        self.refresh_index_locked().await
    }

    fn locate(&self, id: &BlobId) -> Option<Located> {
        self.index.read().expect("index lock").get(id)
    }

    /// Where `id` is stored, loading index files written since the index was last read when
    /// it is not known yet.
    pub(crate) async fn locate_or_refresh(&self, id: BlobId) -> Result<Located> {
        match self.locate(&id) {
            Some(l) => Ok(l),
            None => {
                self.refresh_index().await?;
                self.locate(&id).ok_or(Error::BlobNotIndexed { id })
            }
        }
    }

    /// The locations of the first blob of `ids` and of the blobs after it that follow it
    /// directly in the same pack, up to [`MAX_RUN_BYTES`] in all (at least one blob).
    async fn locate_run(&self, ids: &[BlobId]) -> Result<Vec<Located>> {
        let first = self.locate_or_refresh(ids[0]).await?;
        let index = self.index.read().expect("index lock");
        Ok(extend_run(first, ids[1..].iter().map(|id| index.get(id))))
    }

    /// Fetches a run from [`RepoInner::locate_run`] with one ranged read and decodes its blobs.
    async fn fetch_run(&self, run: Vec<Located>) -> Result<Vec<Bytes>> {
        let (first, last) = match run.as_slice() {
            [] => return Ok(Vec::new()),
            [one] => {
                return Ok(vec![
                    fetch_blob(&*self.store, &self.codec, &self.key, *one).await?,
                ])
            }
            [first, .., last] => (*first, *last),
        };
        let range = first.entry.range().start..last.entry.range().end;
        let stored = read_stored(&*self.store, first.pack, range).await?;
        let path = pack_path(&first.pack.id);
        // The run's blobs lie back to back (`extend_run`): split the read into one owned
        // piece per blob, so each is opened in place without a copy.
        let mut rest = blob::owned(stored);
        futures::future::try_join_all(run.into_iter().map(|located| {
            let piece = rest.split_to(located.entry.stored_len as usize);
            decode_stored(&self.codec, &self.key, &path, located, piece)
        }))
        .await
    }
}

/// How messages and [`Repository::location`] name a repository: a local one by its absolute
/// directory, resolved if it exists (a relative `repository` would read "repository repository
/// is encrypted …"), a cloud one by its URL as given.
fn shown_location(input: &str, parsed: &Location) -> String {
    match parsed.local_path() {
        Some(p) => std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string(),
        None => input.to_owned(),
    }
}

/// Fails with [`Error::ContainerNotFound`] if the store's bucket or container does not exist
/// (listing its root says "not found"; an empty but existing one lists fine).
async fn probe_container(
    store: &dyn ObjectStore,
    location: &str,
    parsed: Option<&Location>,
) -> Result<()> {
    let missing = || Error::ContainerNotFound {
        location: location.to_owned(),
        noun: parsed.map_or("bucket or container", |l| l.backend().container_noun()),
        container: parsed
            .and_then(Location::container)
            .unwrap_or(location)
            .to_owned(),
    };
    match store.list_with_delimiter(None).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::NotFound { .. }) => Err(missing()),
        // Listing a prefix of an existing bucket never answers 404.
        Err(e) if crate::error::http_status(&e) == Some(404) || names_missing_bucket(&e) => {
            Err(missing())
        }
        Err(e) => Err(Error::backend("list", "/")(e)),
    }
}

/// object_store reports a list of a missing bucket or container as a generic error around the
/// HTTP 404 (its `RetryError` is private), so the service's documented error code in the
/// response is the only sign: S3 `NoSuchBucket`
/// (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html), Azure
/// `ContainerNotFound` (https://learn.microsoft.com/rest/api/storageservices/blob-service-error-codes),
/// GCS "The specified bucket does not exist.".
fn names_missing_bucket(err: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("<Code>NoSuchBucket</Code>")
            || text.contains("<Code>ContainerNotFound</Code>")
            || text.contains("The specified bucket does not exist")
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Parses a snapshot's item list (JSON Lines) as its bytes arrive.
pub(crate) struct ItemParser {
    name: String,
    pending: Vec<u8>,
    line_no: usize,
    items: Vec<Item>,
}

impl ItemParser {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        Self {
            name: snapshot::snapshot_path(&snapshot.id).to_string(),
            pending: Vec::new(),
            line_no: 0,
            items: Vec::with_capacity(snapshot.item_count.min(1 << 20) as usize),
        }
    }

    fn parse_line(&mut self, start: usize, end: usize) -> Result<()> {
        self.line_no += 1;
        let item = serde_json::from_slice(&self.pending[start..end]).map_err(|e| {
            Error::CorruptObject {
                kind: "snapshot",
                name: self.name.clone(),
                detail: format!("item list line {}: {e}", self.line_no),
            }
        })?;
        self.items.push(item);
        Ok(())
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            self.parse_line(start, start + nl)?;
            start += nl + 1;
        }
        self.pending.drain(..start);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Vec<Item>> {
        if !self.pending.is_empty() {
            self.parse_line(0, self.pending.len())?;
        }
        Ok(self.items)
    }
}

/// Extends a run that starts at `first` with the blobs that follow it directly in the same
/// pack (`next` yields their locations in content order, `None` for one not indexed), while
/// the run stays within [`MAX_RUN_BYTES`].
fn extend_run(first: Located, next: impl Iterator<Item = Option<Located>>) -> Vec<Located> {
    let mut run = vec![first];
    let mut end = first.entry.range().end;
    for located in next {
        let Some(located) = located else { break };
        let at = located.entry.range();
        if located.pack.id != first.pack.id
            || at.start != end
            || at.end - first.entry.range().start > MAX_RUN_BYTES
        {
            break;
        }
        end = at.end;
        run.push(located);
    }
    run
}

/// Reads `range` of `pack`, naming a missing pack, a pack shorter than the index says, or a
/// cut-short read.
pub(crate) async fn read_stored(
    store: &dyn ObjectStore,
    pack: crate::index::PackInfo,
    range: std::ops::Range<u64>,
) -> Result<Bytes> {
    let path = pack_path(&pack.id);
    // `get_ranges`, not `get_range`: `LocalFileSystem` answers it with one blocking-pool job
    // (open and read), where `get_range` takes two (open, then read); other stores answer both
    // the same way.
    let read = store
        .get_ranges(&path, std::slice::from_ref(&range))
        .await
        .map(|mut pieces| pieces.pop().unwrap_or_default());
    let stored = match read {
        Ok(b) => b,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::MissingObject {
                kind: "pack",
                name: path.to_string(),
            })
        }
        Err(e) => {
            if let Ok(meta) = store.head(&path).await {
                if meta.size != pack.size {
                    return Err(Error::CorruptObject {
                        kind: "pack",
                        name: path.to_string(),
                        detail: format!(
                            "{} bytes long, the index says {}: truncated or overwritten",
                            meta.size, pack.size
                        ),
                    });
                }
            }
            return Err(Error::backend("read", path.to_string())(e));
        }
    };
    if stored.len() as u64 != range.end - range.start {
        return Err(Error::CorruptObject {
            kind: "pack",
            name: path.to_string(),
            detail: format!(
                "bytes {}..{} cut short ({} of {} bytes): the pack is truncated",
                range.start,
                range.end,
                stored.len(),
                range.end - range.start
            ),
        });
    }
    Ok(stored)
}

/// Blobs this small (stored and decoded) are decoded on the async thread: a hop to the compute
/// pool and back costs more than opening, decompressing and hashing them (most mail messages
/// are one such blob).
const DECODE_INLINE_BYTES: u64 = 64 * 1024;

/// Whether stored bytes of `stored` length holding `raw` bytes of plaintext are decoded on the
/// async thread ([`DECODE_INLINE_BYTES`]) rather than on the compute pool.
pub(crate) fn decodes_inline(stored: u64, raw: u64) -> bool {
    stored <= DECODE_INLINE_BYTES && raw <= DECODE_INLINE_BYTES
}

/// Decodes one blob's stored bytes, verifying its keyed hash: on the compute pool, or inline if
/// it is small ([`DECODE_INLINE_BYTES`]).
async fn decode_stored(
    codec: &Codec,
    key: &[u8; KEY_LEN],
    path: &Path,
    located: Located,
    stored: BytesMut,
) -> Result<Bytes> {
    if decodes_inline(stored.len() as u64, u64::from(located.entry.raw_len)) {
        return decode_located(codec, key, path, located, stored);
    }
    let key = Zeroizing::new(*key);
    let codec = codec.clone();
    let path = path.clone();
    crate::compute::run(move || decode_located(&codec, &key, &path, located, stored)).await?
}

/// Decodes one blob's stored bytes on this thread, verifying its keyed hash; a failure is
/// [`Error::CorruptObject`] naming the pack and the blob's offset in it.
pub(crate) fn decode_located(
    codec: &Codec,
    key: &[u8; KEY_LEN],
    path: &Path,
    located: Located,
    stored: BytesMut,
) -> Result<Bytes> {
    let entry = located.entry;
    blob::decode_owned(
        key,
        codec,
        &entry.id,
        stored,
        entry.compression,
        entry.raw_len,
    )
    .map_err(|detail| Error::CorruptObject {
        kind: "pack",
        name: path.to_string(),
        detail: format!("{detail}, at offset {}", entry.offset),
    })
}

/// Fetches one blob's stored bytes from its pack and decodes them (verifying the hash).
pub(crate) async fn fetch_blob(
    store: &dyn ObjectStore,
    codec: &Codec,
    key: &[u8; KEY_LEN],
    located: Located,
) -> Result<Bytes> {
    let stored = read_stored(store, located.pack, located.entry.range()).await?;
    decode_stored(
        codec,
        key,
        &pack_path(&located.pack.id),
        located,
        blob::owned(stored),
    )
    .await
}

/// `input` as a lowercase snapshot id prefix: 4 to 64 hex digits.
fn snapshot_prefix(input: &str) -> Result<String> {
    let wanted = input.trim().to_ascii_lowercase();
    if wanted.len() < 4 || wanted.len() > 64 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidId {
            kind: "snapshot",
            input: input.to_owned(),
            expected: "a snapshot id or a prefix of it with at least 4 hex digits",
        });
    }
    Ok(wanted)
}

/// What [`Repository::scan_snapshots`] found.
#[derive(Clone, Debug, Default)]
pub struct SnapshotScan {
    /// The readable snapshots, oldest first (ties broken by id).
    pub snapshots: Vec<Snapshot>,
    /// Snapshot objects that are present but cannot be read, by id.
    pub unreadable: Vec<UnreadableSnapshot>,
}

/// A snapshot object that is present but cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableSnapshot {
    /// The snapshot's id (its object's name).
    pub id: SnapshotId,
    /// Why it cannot be read.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Compression;
    use crate::id::PackId;
    use crate::index::PackInfo;
    use crate::pack::BlobEntry;

    fn at(pack: u8, offset: u32, stored_len: u32) -> Located {
        Located {
            pack: PackInfo {
                id: PackId::from_bytes([pack; 32]),
                size: 64 * 1024 * 1024,
            },
            entry: BlobEntry {
                id: BlobId::from_bytes([offset as u8; 32]),
                offset,
                stored_len,
                raw_len: stored_len,
                compression: Compression::None,
            },
        }
    }

    fn offsets(run: &[Located]) -> Vec<u32> {
        run.iter().map(|l| l.entry.offset).collect()
    }

    #[test]
    fn a_run_takes_adjacent_blobs_of_one_pack_only() {
        const K: u32 = 1024;
        // Three blobs back to back, then a gap.
        let run = extend_run(
            at(1, 100, 10 * K),
            [
                Some(at(1, 100 + 10 * K, 5 * K)),
                Some(at(1, 100 + 15 * K, 7 * K)),
                Some(at(1, 100 + 30 * K, 7 * K)),
            ]
            .into_iter(),
        );
        assert_eq!(offsets(&run), [100, 100 + 10 * K, 100 + 15 * K]);
        // Another pack at the very next offset ends the run; so does a blob not indexed.
        let run = extend_run(at(1, 0, K), [Some(at(2, K, K))].into_iter());
        assert_eq!(run.len(), 1);
        let run = extend_run(at(1, 0, K), [None, Some(at(1, K, K))].into_iter());
        assert_eq!(run.len(), 1);
        // The same blob twice in a row (repeated content) is not adjacent to itself.
        let run = extend_run(at(1, 0, K), [Some(at(1, 0, K))].into_iter());
        assert_eq!(run.len(), 1);
    }

    #[test]
    fn a_run_stops_at_one_mib() {
        const KIB: u32 = 1024;
        let next = (1..8).map(|i| Some(at(3, i * 256 * KIB, 256 * KIB)));
        let run = extend_run(at(3, 0, 256 * KIB), next);
        // 0..1 MiB: four 256 KiB blobs; the fifth would end at 1.25 MiB.
        assert_eq!(offsets(&run), [0, 256 * KIB, 512 * KIB, 768 * KIB]);
        // One blob larger than the limit is still a run of one.
        let run = extend_run(
            at(3, 0, 2048 * KIB),
            [Some(at(3, 2048 * KIB, 1))].into_iter(),
        );
        assert_eq!(run.len(), 1);
    }
}
