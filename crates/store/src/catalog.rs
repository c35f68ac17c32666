//! The SQLite catalog: a local, rebuildable cache of the repository's snapshots and items, plus
//! the history of job runs.
//!
//! One file, WAL mode, schema version in `PRAGMA user_version`. Everything except `job_runs`
//! and the journals of backups in progress (`delta_pages`, `stored_items`) can be rebuilt from
//! the repository with [`Catalog::rebuild`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::repository::Repository;
use crate::snapshot::{ContentRef, Item, Snapshot};

/// Schema version written by this build.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    repo_id       TEXT NOT NULL,
    time          TEXT NOT NULL,      -- RFC 3339 UTC, fixed width: sorts by time
    hostname      TEXT NOT NULL,
    service       TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    parent        TEXT,
    tags          TEXT NOT NULL,      -- JSON array
    item_count    INTEGER NOT NULL,
    total_size    INTEGER NOT NULL,
    state         TEXT NOT NULL,      -- JSON: worker state, e.g. deltaLinks
    skipped       TEXT NOT NULL       -- JSON array of {path, id, reason}
);
CREATE INDEX snapshots_by_repo_time ON snapshots (repo_id, time);
CREATE INDEX snapshots_by_resource ON snapshots (service, resource_id, time);

CREATE TABLE items (
    snapshot_id   TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,   -- position in the snapshot's item list
    service       TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    item_id       TEXT NOT NULL,      -- source (Graph) id
    parent_id     TEXT,
    path          TEXT NOT NULL,
    change_key    TEXT,
    size          INTEGER NOT NULL,
    modified      TEXT,
    content_size  INTEGER,
    blobs         BLOB,               -- concatenated 32-byte blob ids
    PRIMARY KEY (snapshot_id, seq)
) WITHOUT ROWID;
CREATE INDEX items_by_item_id ON items (item_id);
CREATE INDEX items_by_path ON items (service, resource_id, path);

CREATE TABLE job_runs (
    id          INTEGER PRIMARY KEY,
    job_id      TEXT NOT NULL,
    service     TEXT NOT NULL,
    operation   TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    outcome     TEXT NOT NULL,        -- ok | partial | refused | failed
    detail      TEXT NOT NULL         -- JSON, e.g. the permission report
);
CREATE INDEX job_runs_by_start ON job_runs (started_at);
";

/// Delta pages of backups in progress (added without a schema version change: created when
/// missing, by every build that knows it; older builds ignore it).
const DELTA_PAGES: &str = "
CREATE TABLE IF NOT EXISTS delta_pages (
    scope       TEXT NOT NULL,        -- service/resource, e.g. onedrive/<user id>
    collection  TEXT NOT NULL,        -- the delta collection, e.g. drive:<drive id>
    seq         INTEGER NOT NULL,     -- page number in the walk, from 0
    start       TEXT NOT NULL,        -- the link the walk began at
    items       TEXT NOT NULL,        -- JSON array: the page's value
    next_link   TEXT,                 -- @odata.nextLink, or
    delta_link  TEXT,                 -- @odata.deltaLink (the walk is complete)
    updated     TEXT NOT NULL,
    PRIMARY KEY (scope, collection, seq)
);
";

/// Item content stored by backups in progress (added like `delta_pages`): a killed backup,
/// resumed, reuses the content its items' rows name instead of downloading it again, when the
/// item is unchanged and the repository's index holds every blob.
const STORED_ITEMS: &str = "
CREATE TABLE IF NOT EXISTS stored_items (
    scope       TEXT NOT NULL,        -- service/resource, as in delta_pages
    collection  TEXT NOT NULL,        -- the delta collection the item was reported in
    item_id     TEXT NOT NULL,        -- source (Graph) id
    kind        TEXT NOT NULL,        -- item kind, e.g. message, file
    version     TEXT NOT NULL,        -- what the worker compares: changeKey, cTag
    content     TEXT NOT NULL,        -- JSON: the ContentRef
    updated     TEXT NOT NULL,
    PRIMARY KEY (scope, collection, item_id)
);
";

/// One item whose content a backup in progress stored ([`ItemJournal`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredItem {
    /// Source (Graph) id.
    pub item_id: String,
    /// Item kind, e.g. `"message"`, `"file"`.
    pub kind: String,
    /// The version the content belongs to, as the worker compares it with its parent
    /// snapshot: a message's `changeKey`, a driveItem's `cTag`.
    pub version: String,
    /// The stored content.
    pub content: ContentRef,
}

/// One resource's journal of item content stored by the backup in progress, in the catalog's
/// `stored_items` table: the workers record each item as its content is stored and, when a
/// killed backup is resumed, reuse the content of unchanged items whose blobs the repository
/// holds ([`crate::BackupWriter::contains`]) instead of downloading them again.
///
/// Entries are grouped by delta collection (the names the delta journal uses, e.g.
/// `drive:{drive id}` or a folder's delta path). The owner discards the resource's entries
/// once its snapshot is committed, and a collection's entries when its delta walk starts
/// afresh. An entry that outlives its use is harmless: it is only reused for the same item
/// version, and only if every blob is still in the repository.
#[derive(Clone)]
pub struct ItemJournal {
    catalog: Catalog,
    scope: String,
}

impl std::fmt::Debug for ItemJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemJournal")
            .field("catalog", &self.catalog.inner.path)
            .field("scope", &self.scope)
            .finish()
    }
}

impl ItemJournal {
    /// The journal of `scope` (`service/resource id`, as the delta journal's) in `catalog`.
    pub fn new(catalog: Catalog, scope: impl Into<String>) -> Self {
        ItemJournal {
            catalog,
            scope: scope.into(),
        }
    }

    /// The entries of `collection`, by item id.
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures or an entry whose content is not a `ContentRef`.
    pub fn load(&self, collection: &str) -> Result<HashMap<String, StoredItem>> {
        let conn = self.catalog.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT item_id, kind, version, content FROM stored_items \
                 WHERE scope = ?1 AND collection = ?2",
            )
            .map_err(self.catalog.sql_err())?;
        let rows = stmt
            .query_map(params![self.scope, collection], |r| {
                Ok(StoredItem {
                    item_id: r.get(0)?,
                    kind: r.get(1)?,
                    version: r.get(2)?,
                    content: json_col(r, 3)?,
                })
            })
            .map_err(self.catalog.sql_err())?;
        rows.map(|r| r.map(|item| (item.item_id.clone(), item)))
            .collect::<rusqlite::Result<_>>()
            .map_err(self.catalog.sql_err())
    }

    /// Records that `item`'s content is stored (replacing an earlier entry of the same item).
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures.
    pub fn record(&self, collection: &str, item: &StoredItem) -> Result<()> {
        let content = to_json(&item.content)?;
        self.catalog
            .conn()
            .execute(
                "INSERT OR REPLACE INTO stored_items \
                 (scope, collection, item_id, kind, version, content, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    self.scope,
                    collection,
                    item.item_id,
                    item.kind,
                    item.version,
                    content,
                    Utc::now().to_rfc3339()
                ],
            )
            .map_err(self.catalog.sql_err())?;
        Ok(())
    }

    /// Forgets the entries of `collection`, or of the whole scope when `collection` is `None`.
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures.
    pub fn discard(&self, collection: Option<&str>) -> Result<()> {
        self.catalog.discard_stored_items(&self.scope, collection)
    }
}

/// One saved page of a delta walk ([`Catalog::delta_pages`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaPageRow {
    /// The link the walk began at.
    pub start: String,
    /// The page's items, a JSON array as text.
    pub items: String,
    /// `@odata.nextLink`: where the walk continues.
    pub next_link: Option<String>,
    /// `@odata.deltaLink`: the walk is complete.
    pub delta_link: Option<String>,
}

/// The catalog. Cheap to clone; one SQLite connection behind a mutex.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<CatalogInner>,
}

struct CatalogInner {
    path: String,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// What [`Catalog::sync`] and [`Catalog::rebuild`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Snapshots added (with their items).
    pub added: u64,
    /// Snapshots removed (with their items).
    pub removed: u64,
    /// Snapshots in the repository left out because their object or item list cannot be
    /// read (`m365bk check` names the damage); the catalog keeps what it already had of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<crate::UnreadableSnapshot>,
}

/// One snapshot as the catalog lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// Snapshot id.
    pub id: SnapshotId,
    /// Commit time.
    pub time: DateTime<Utc>,
    /// Host that wrote it.
    pub hostname: String,
    /// Service, e.g. `"exchange"`.
    pub service: String,
    /// Resource id.
    pub resource_id: String,
    /// Resource display name.
    pub resource_name: String,
    /// Job that made it.
    pub job_id: String,
    /// Parent snapshot.
    pub parent: Option<SnapshotId>,
    /// Number of items.
    pub item_count: u64,
    /// Sum of item sizes, bytes.
    pub total_size: u64,
    /// Tags.
    pub tags: Vec<String>,
}

/// One item as the catalog lists it (metadata stays in the repository).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRow {
    /// Item type, e.g. `"message"`.
    pub kind: String,
    /// Source (Graph) id.
    pub id: String,
    /// Source id of the parent.
    pub parent_id: Option<String>,
    /// Display path.
    pub path: String,
    /// Size at the source, bytes.
    pub size: u64,
    /// Source change key.
    pub change_key: Option<String>,
    /// Modification time at the source.
    pub modified: Option<DateTime<Utc>>,
    /// Content length in bytes, if the item has content.
    pub content_size: Option<u64>,
    /// Content blob ids in order (empty if no content).
    pub blobs: Vec<BlobId>,
}

impl ItemRow {
    /// The item's content reference, if it has content.
    pub fn content(&self) -> Option<ContentRef> {
        self.content_size.map(|size| ContentRef {
            size,
            blobs: self.blobs.clone(),
        })
    }
}

/// One run of a job (backup, restore, check…), as the daemon records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    /// Job id from the configuration.
    pub job_id: String,
    /// Service, e.g. `"exchange"`.
    pub service: String,
    /// Operation, e.g. `"backup"`, `"restore"`.
    pub operation: String,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// End time.
    pub finished_at: DateTime<Utc>,
    /// `"ok"`, `"partial"`, `"refused"` or `"failed"`.
    pub outcome: String,
    /// Details as JSON, e.g. the gate's permission report.
    pub detail: serde_json::Value,
}

fn fmt_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn time_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| conversion(idx, e))
}

fn opt_time_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| conversion(idx, e)),
    }
}

fn id_col<T: std::str::FromStr<Err = Error>>(
    row: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|e: Error| conversion(idx, e))
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| conversion(idx, e))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal {
        detail: format!("cannot encode catalog JSON: {e}"),
    })
}

impl Catalog {
    /// Opens (or creates, with its parent directory) the catalog at `path`, in WAL mode, and
    /// creates the schema if the file is new.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created, [`Error::Catalog`] for SQLite errors,
    /// [`Error::CatalogVersion`] if a newer m365bk wrote the file.
    pub fn open(path: &Path) -> Result<Catalog> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let sql = |source| Error::Catalog {
            path: shown.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(catalog = %shown, mode, "SQLite refused WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(Error::CatalogVersion {
                path: shown,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == 0 {
            let tx = conn.transaction().map_err(sql)?;
            tx.execute_batch(SCHEMA).map_err(sql)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        conn.execute_batch(DELTA_PAGES).map_err(sql)?;
        conn.execute_batch(STORED_ITEMS).map_err(sql)?;
        Ok(Catalog {
            inner: Arc::new(CatalogInner {
                path: shown,
                conn: Mutex::new(conn),
            }),
        })
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Catalog {
            path: self.inner.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves SQLite consistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The saved pages of the delta walk of `collection` in `scope`, in order; empty when none.
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures.
    pub fn delta_pages(&self, scope: &str, collection: &str) -> Result<Vec<DeltaPageRow>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT start, items, next_link, delta_link FROM delta_pages \
                 WHERE scope = ?1 AND collection = ?2 ORDER BY seq",
            )
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map(params![scope, collection], |r| {
                Ok(DeltaPageRow {
                    start: r.get(0)?,
                    items: r.get(1)?,
                    next_link: r.get(2)?,
                    delta_link: r.get(3)?,
                })
            })
            .map_err(self.sql_err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql_err())
    }

    /// Saves page `seq` of the delta walk of `collection` in `scope` (replacing a page with
    /// the same number). One transaction: after a crash the page is there whole or not at all.
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures.
    pub fn save_delta_page(
        &self,
        scope: &str,
        collection: &str,
        seq: u64,
        page: &DeltaPageRow,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO delta_pages \
                 (scope, collection, seq, start, items, next_link, delta_link, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    scope,
                    collection,
                    seq as i64,
                    page.start,
                    page.items,
                    page.next_link,
                    page.delta_link,
                    Utc::now().to_rfc3339()
                ],
            )
            .map_err(self.sql_err())?;
        Ok(())
    }

    /// Forgets the saved delta pages of `collection` in `scope`, or of the whole scope when
    /// `collection` is `None` (after its snapshot is committed).
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures.
    pub fn discard_delta_pages(&self, scope: &str, collection: Option<&str>) -> Result<()> {
        let conn = self.conn();
        match collection {
            Some(c) => conn.execute(
                "DELETE FROM delta_pages WHERE scope = ?1 AND collection = ?2",
                params![scope, c],
            ),
            None => conn.execute("DELETE FROM delta_pages WHERE scope = ?1", params![scope]),
        }
        .map_err(self.sql_err())?;
        Ok(())
    }

    /// Forgets the [`ItemJournal`] entries of `collection` in `scope`, or of the whole scope
    /// when `collection` is `None` (after its snapshot is committed).
    ///
    /// # Errors
    /// [`Error::Catalog`] on SQLite failures.
    pub fn discard_stored_items(&self, scope: &str, collection: Option<&str>) -> Result<()> {
        let conn = self.conn();
        match collection {
            Some(c) => conn.execute(
                "DELETE FROM stored_items WHERE scope = ?1 AND collection = ?2",
                params![scope, c],
            ),
            None => conn.execute("DELETE FROM stored_items WHERE scope = ?1", params![scope]),
        }
        .map_err(self.sql_err())?;
        Ok(())
    }

    /// Brings the catalog in line with `repo`: adds the snapshots (and their items) it lacks,
    /// removes those the repository no longer has.
    ///
    /// # Errors
    /// Repository errors while listing snapshots or reading item lists ([`Error::Backend`];
    /// a damaged snapshot or item list is reported in [`SyncStats::unreadable`] instead),
    /// [`Error::Catalog`].
    pub async fn sync(&self, repo: &Repository) -> Result<SyncStats> {
        let scan = repo.scan_snapshots().await?;
        let repo_id = repo.id().to_owned();
        let known: HashSet<SnapshotId> = self.snapshot_ids(&repo_id)?;
        // A damaged snapshot is still in the repository: what the catalog has of it stays.
        let present: HashSet<SnapshotId> = scan
            .snapshots
            .iter()
            .map(|s| s.id)
            .chain(scan.unreadable.iter().map(|u| u.id))
            .collect();
        let mut stats = SyncStats {
            unreadable: scan.unreadable,
            ..SyncStats::default()
        };
        for snapshot in scan.snapshots {
            if known.contains(&snapshot.id) {
                continue;
            }
            let items = match repo.load_items(&snapshot).await {
                Ok(items) => items,
                Err(
                    e @ (Error::CorruptObject { .. }
                    | Error::MissingObject { .. }
                    | Error::BlobNotIndexed { .. }),
                ) => {
                    tracing::warn!(snapshot = %snapshot.id, error = %e, "snapshot's item list unreadable; left out of the catalog");
                    stats.unreadable.push(crate::UnreadableSnapshot {
                        id: snapshot.id,
                        error: format!("its item list cannot be read: {e}"),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let catalog = self.clone();
            let repo_id = repo_id.clone();
            tokio::task::spawn_blocking(move || {
                catalog.record_snapshot(&repo_id, &snapshot, &items)
            })
            .await
            .map_err(Error::join)??;
            stats.added += 1;
        }
        let gone: Vec<SnapshotId> = known.difference(&present).copied().collect();
        if !gone.is_empty() {
            let catalog = self.clone();
            stats.removed = tokio::task::spawn_blocking(move || catalog.remove_snapshots(&gone))
                .await
                .map_err(Error::join)??;
        }
        tracing::info!(
            added = stats.added,
            removed = stats.removed,
            unreadable = stats.unreadable.len(),
            "catalog synced"
        );
        Ok(stats)
    }

    /// Drops everything the catalog holds for `repo`, then [`Catalog::sync`]s. Job runs stay.
    ///
    /// # Errors
    /// As [`Catalog::sync`].
    pub async fn rebuild(&self, repo: &Repository) -> Result<SyncStats> {
        let catalog = self.clone();
        let repo_id = repo.id().to_owned();
        let removed = tokio::task::spawn_blocking(move || {
            let ids: Vec<SnapshotId> = catalog.snapshot_ids(&repo_id)?.into_iter().collect();
            catalog.remove_snapshots(&ids)
        })
        .await
        .map_err(Error::join)??;
        let synced = self.sync(repo).await?;
        Ok(SyncStats { removed, ..synced })
    }

    fn snapshot_ids(&self, repo_id: &str) -> Result<HashSet<SnapshotId>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id FROM snapshots WHERE repo_id = ?1")
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map([repo_id], |row| id_col(row, 0))
            .map_err(self.sql_err())?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.sql_err())
    }

    fn remove_snapshots(&self, ids: &[SnapshotId]) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.sql_err())?;
        let mut removed = 0;
        {
            let mut items = tx
                .prepare_cached("DELETE FROM items WHERE snapshot_id = ?1")
                .map_err(self.sql_err())?;
            let mut snaps = tx
                .prepare_cached("DELETE FROM snapshots WHERE id = ?1")
                .map_err(self.sql_err())?;
            for id in ids {
                let id = id.to_hex();
                items.execute([&id]).map_err(self.sql_err())?;
                removed += snaps.execute([&id]).map_err(self.sql_err())? as u64;
            }
        }
        tx.commit().map_err(self.sql_err())?;
        Ok(removed)
    }

    /// Records a snapshot and its items (replacing any earlier record of the same snapshot),
    /// in one transaction.
    ///
    /// # Errors
    /// [`Error::Catalog`].
    pub fn record_snapshot(
        &self,
        repo_id: &str,
        snapshot: &Snapshot,
        items: &[Item],
    ) -> Result<()> {
        let tags = to_json(&snapshot.tags)?;
        let state = to_json(&snapshot.state)?;
        let skipped = to_json(&snapshot.skipped)?;
        let id = snapshot.id.to_hex();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.sql_err())?;
        tx.execute("DELETE FROM items WHERE snapshot_id = ?1", [&id])
            .map_err(self.sql_err())?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [&id])
            .map_err(self.sql_err())?;
        tx.execute(
            "INSERT INTO snapshots (id, repo_id, time, hostname, service, resource_id, resource_name,
                                    job_id, parent, tags, item_count, total_size, state, skipped)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                id,
                repo_id,
                fmt_time(&snapshot.time),
                snapshot.hostname,
                snapshot.service,
                snapshot.resource_id,
                snapshot.resource_name,
                snapshot.job_id,
                snapshot.parent.map(|p| p.to_hex()),
                tags,
                snapshot.item_count as i64,
                snapshot.total_size as i64,
                state,
                skipped,
            ],
        )
        .map_err(self.sql_err())?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO items (snapshot_id, seq, service, resource_id, kind, item_id, parent_id,
                                        path, change_key, size, modified, content_size, blobs)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(self.sql_err())?;
            let mut blob_bytes = Vec::new();
            for (seq, item) in items.iter().enumerate() {
                let blobs = item.content.as_ref().map(|c| {
                    blob_bytes.clear();
                    for b in &c.blobs {
                        blob_bytes.extend_from_slice(b.as_bytes());
                    }
                    blob_bytes.as_slice()
                });
                insert
                    .execute(params![
                        id,
                        seq as i64,
                        snapshot.service,
                        snapshot.resource_id,
                        item.kind,
                        item.id,
                        item.parent_id,
                        item.path,
                        item.change_key,
                        item.size as i64,
                        item.modified.as_ref().map(fmt_time),
                        item.content.as_ref().map(|c| c.size as i64),
                        blobs,
                    ])
                    .map_err(self.sql_err())?;
            }
        }
        tx.commit().map_err(self.sql_err())
    }

    /// The snapshots of repository `repo_id`, oldest first.
    ///
    /// # Errors
    /// [`Error::Catalog`].
    pub fn snapshots(&self, repo_id: &str) -> Result<Vec<SnapshotRow>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, time, hostname, service, resource_id, resource_name, job_id, parent,
                        item_count, total_size, tags
                 FROM snapshots WHERE repo_id = ?1 ORDER BY time, id",
            )
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map([repo_id], |row| {
                Ok(SnapshotRow {
                    id: id_col(row, 0)?,
                    time: time_col(row, 1)?,
                    hostname: row.get(2)?,
                    service: row.get(3)?,
                    resource_id: row.get(4)?,
                    resource_name: row.get(5)?,
                    job_id: row.get(6)?,
                    parent: match row.get::<_, Option<String>>(7)? {
                        None => None,
                        Some(s) => Some(s.parse().map_err(|e: Error| conversion(7, e))?),
                    },
                    item_count: row.get::<_, i64>(8)? as u64,
                    total_size: row.get::<_, i64>(9)? as u64,
                    tags: json_col(row, 10)?,
                })
            })
            .map_err(self.sql_err())?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.sql_err())
    }

    /// The items of a snapshot, in snapshot order. Empty if the catalog does not know it.
    ///
    /// # Errors
    /// [`Error::Catalog`].
    pub fn items(&self, snapshot: &SnapshotId) -> Result<Vec<ItemRow>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT kind, item_id, parent_id, path, size, change_key, modified, content_size, blobs
                 FROM items WHERE snapshot_id = ?1 ORDER BY seq",
            )
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map([snapshot.to_hex()], |row| {
                let blob_bytes: Option<Vec<u8>> = row.get(8)?;
                let blobs = blob_bytes
                    .unwrap_or_default()
                    .chunks_exact(32)
                    .map(|c| BlobId::from_bytes(c.try_into().expect("32-byte chunk")))
                    .collect();
                Ok(ItemRow {
                    kind: row.get(0)?,
                    id: row.get(1)?,
                    parent_id: row.get(2)?,
                    path: row.get(3)?,
                    size: row.get::<_, i64>(4)? as u64,
                    change_key: row.get(5)?,
                    modified: opt_time_col(row, 6)?,
                    content_size: row.get::<_, Option<i64>>(7)?.map(|s| s as u64),
                    blobs,
                })
            })
            .map_err(self.sql_err())?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.sql_err())
    }

    /// Records one job run.
    ///
    /// # Errors
    /// [`Error::Catalog`].
    pub fn record_job_run(&self, run: &JobRun) -> Result<()> {
        let detail = to_json(&run.detail)?;
        self.conn()
            .execute(
                "INSERT INTO job_runs (job_id, service, operation, started_at, finished_at, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    run.job_id,
                    run.service,
                    run.operation,
                    fmt_time(&run.started_at),
                    fmt_time(&run.finished_at),
                    run.outcome,
                    detail,
                ],
            )
            .map_err(self.sql_err())?;
        Ok(())
    }

    /// The `limit` most recent job runs, newest first.
    ///
    /// # Errors
    /// [`Error::Catalog`].
    pub fn job_runs(&self, limit: usize) -> Result<Vec<JobRun>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT job_id, service, operation, started_at, finished_at, outcome, detail
                 FROM job_runs ORDER BY started_at DESC, id DESC LIMIT ?1",
            )
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                Ok(JobRun {
                    job_id: row.get(0)?,
                    service: row.get(1)?,
                    operation: row.get(2)?,
                    started_at: time_col(row, 3)?,
                    finished_at: time_col(row, 4)?,
                    outcome: row.get(5)?,
                    detail: json_col(row, 6)?,
                })
            })
            .map_err(self.sql_err())?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.sql_err())
    }

    /// Schema version of the open catalog.
    ///
    /// # Errors
    /// [`Error::Catalog`].
    pub fn schema_version(&self) -> Result<i64> {
        self.conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(self.sql_err())
    }
}
