//! Snapshots and the items they list.
//!
//! ```text
//! snapshot object  header (b"MBKS", version, envelope, 0, 0) ‖ zstd(JSON of the snapshot without
//!                  its id), sealed if encrypted
//! tree             the item list: one JSON object per line (JSON Lines), stored as content blobs
//! ```
//! A snapshot's id is the BLAKE3 hash of its object's bytes (as stored).

use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{Codec, ObjectKind};
use crate::id::{BlobId, SnapshotId};

/// Object path of a snapshot: `snapshots/<64 hex>`.
pub(crate) fn snapshot_path(id: &SnapshotId) -> Path {
    Path::from(format!("snapshots/{id}"))
}

/// Stored content: its length and the blobs that make it up, in order.
///
/// Concatenating the blobs' plaintext gives the content. A blob may appear more than once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentRef {
    /// Content length in bytes.
    pub size: u64,
    /// Blob ids in content order.
    pub blobs: Vec<BlobId>,
}

/// One backed-up item (a message, folder, drive item, contact, …). Opaque to the store except
/// for `content`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Item {
    /// Item type, e.g. `"message"`, `"mailFolder"`, `"driveItem"`, `"contact"`.
    pub kind: String,
    /// Source id (e.g. the Graph id).
    pub id: String,
    /// Source id of the parent item, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Display path, e.g. `"Inbox/Projects/Report.eml"`.
    pub path: String,
    /// Source change key (Graph `changeKey` / eTag), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_key: Option<String>,
    /// Size in bytes as the source reports it.
    pub size: u64,
    /// Last modification time at the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<DateTime<Utc>>,
    /// Anything else the worker wants to keep (JSON).
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// The item's content in the repository, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentRef>,
}

impl Item {
    /// True when this item is `prefix` itself or lies below it in the display-path tree
    /// (`Inbox/Projects` covers `Inbox/Projects/Report`, not `Inbox/ProjectsOld`). A trailing
    /// `/` on `prefix` is ignored.
    pub fn is_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        self.path == prefix
            || (self.path.len() > prefix.len()
                && self.path.starts_with(prefix)
                && self.path.as_bytes()[prefix.len()] == b'/')
    }
}

/// An item the backup could not read, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedItem {
    /// Display path.
    pub path: String,
    /// Source id.
    pub id: String,
    /// Why it was skipped (e.g. the classified Graph error).
    pub reason: String,
}

/// What a worker hands to [`crate::BackupWriter::commit_snapshot`].
#[derive(Clone, Debug, Default)]
pub struct SnapshotDraft {
    /// Service, e.g. `"exchange"`, `"onedrive"`.
    pub service: String,
    /// Resource id (user, group, site id).
    pub resource_id: String,
    /// Resource display name (UPN, site name).
    pub resource_name: String,
    /// The job that made it.
    pub job_id: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// What part of the resource the snapshot holds when not all of it: the item types a
    /// `backup --items` selected (e.g. `["mail"]`), sorted. Empty: everything the service backs
    /// up. `forget` keeps snapshots per service, resource and selection, so a partial backup
    /// never counts as a newer copy of a full one.
    pub selection: Vec<String>,
    /// The snapshot this one was made incrementally from.
    pub parent: Option<SnapshotId>,
    /// Every item of the resource at backup time (unchanged items included).
    pub items: Vec<Item>,
    /// Worker state to resume from, e.g. `deltaLink`s per folder.
    pub state: serde_json::Value,
    /// Items that could not be read.
    pub skipped: Vec<SkippedItem>,
}

/// A committed snapshot: a complete view of one resource at one time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// The snapshot's id.
    pub id: SnapshotId,
    /// Commit time (UTC).
    pub time: DateTime<Utc>,
    /// Host that wrote it.
    pub hostname: String,
    /// See [`SnapshotDraft::service`].
    pub service: String,
    /// See [`SnapshotDraft::resource_id`].
    pub resource_id: String,
    /// See [`SnapshotDraft::resource_name`].
    pub resource_name: String,
    /// See [`SnapshotDraft::job_id`].
    pub job_id: String,
    /// See [`SnapshotDraft::tags`].
    pub tags: Vec<String>,
    /// See [`SnapshotDraft::selection`].
    pub selection: Vec<String>,
    /// See [`SnapshotDraft::parent`].
    pub parent: Option<SnapshotId>,
    /// The item list, as JSON Lines stored through the same chunk/dedup path as content.
    pub tree: ContentRef,
    /// Number of items.
    pub item_count: u64,
    /// Sum of the items' `size`, in bytes.
    pub total_size: u64,
    /// See [`SnapshotDraft::state`].
    pub state: serde_json::Value,
    /// See [`SnapshotDraft::skipped`].
    pub skipped: Vec<SkippedItem>,
}

/// The stored form: a snapshot without its id (the id is the hash of this object).
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    time: DateTime<Utc>,
    hostname: String,
    service: String,
    resource_id: String,
    resource_name: String,
    job_id: String,
    tags: Vec<String>,
    /// Absent in snapshots of earlier builds (and when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    selection: Vec<String>,
    parent: Option<SnapshotId>,
    tree: ContentRef,
    item_count: u64,
    total_size: u64,
    state: serde_json::Value,
    skipped: Vec<SkippedItem>,
}

/// Encodes a snapshot object; returns it with its id filled in, and the bytes.
pub(crate) fn encode_snapshot(
    codec: &Codec,
    draft: SnapshotDraft,
    tree: ContentRef,
    time: DateTime<Utc>,
    hostname: String,
    level: i32,
) -> Result<(Snapshot, Vec<u8>)> {
    let file = SnapshotFile {
        time,
        hostname,
        service: draft.service,
        resource_id: draft.resource_id,
        resource_name: draft.resource_name,
        job_id: draft.job_id,
        tags: draft.tags,
        selection: {
            let mut selection = draft.selection;
            selection.sort();
            selection.dedup();
            selection
        },
        parent: draft.parent,
        tree,
        item_count: draft.items.len() as u64,
        total_size: draft.items.iter().map(|i| i.size).sum(),
        state: draft.state,
        skipped: draft.skipped,
    };
    let json = serde_json::to_vec(&file).map_err(|e| Error::Internal {
        detail: format!("cannot encode snapshot: {e}"),
    })?;
    let compressed = zstd::bulk::compress(&json, level).map_err(|e| Error::Internal {
        detail: format!("zstd failed on a snapshot: {e}"),
    })?;
    let bytes = codec.encode(ObjectKind::Snapshot, &compressed);
    let id = SnapshotId::from_bytes(*blake3::hash(&bytes).as_bytes());
    Ok((from_file(id, file), bytes))
}

/// Decodes and verifies a snapshot object.
///
/// # Errors
/// [`Error::CorruptObject`] if the bytes do not hash to `id`, fail authentication or do not
/// parse.
pub(crate) fn decode_snapshot(codec: &Codec, id: &SnapshotId, bytes: &[u8]) -> Result<Snapshot> {
    let name = snapshot_path(id).to_string();
    let corrupt = |detail: String| Error::CorruptObject {
        kind: "snapshot",
        name: name.clone(),
        detail,
    };
    // The name first: a flipped bit in the header is damage, not a newer format version.
    if blake3::hash(bytes).as_bytes() != id.as_bytes() {
        return Err(corrupt("content does not hash to its name".to_owned()));
    }
    codec.check_header(ObjectKind::Snapshot, &name, bytes)?;
    let body = codec.decode(ObjectKind::Snapshot, &name, bytes)?;
    let json = zstd::stream::decode_all(&*body).map_err(|e| corrupt(format!("zstd: {e}")))?;
    let file: SnapshotFile =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    Ok(from_file(*id, file))
}

fn from_file(id: SnapshotId, f: SnapshotFile) -> Snapshot {
    Snapshot {
        id,
        time: f.time,
        hostname: f.hostname,
        service: f.service,
        resource_id: f.resource_id,
        resource_name: f.resource_name,
        job_id: f.job_id,
        tags: f.tags,
        selection: f.selection,
        parent: f.parent,
        tree: f.tree,
        item_count: f.item_count,
        total_size: f.total_size,
        state: f.state,
        skipped: f.skipped,
    }
}

/// This machine's host name, for snapshots.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod item_path_tests {
    use super::Item;

    fn item(path: &str) -> Item {
        Item {
            kind: "file".into(),
            id: "1".into(),
            parent_id: None,
            path: path.into(),
            change_key: None,
            size: 0,
            modified: None,
            metadata: serde_json::Value::Null,
            content: None,
        }
    }

    #[test]
    fn is_under_follows_path_segments() {
        let i = item("Inbox/Projects/Report");
        assert!(i.is_under("Inbox"));
        assert!(i.is_under("Inbox/Projects/"));
        assert!(i.is_under("Inbox/Projects/Report"));
        assert!(!i.is_under("Inbox/Proj"));
        assert!(!i.is_under("Inbox/Projects/Report/x"));
        assert!(!item("Inbox/ProjectsOld/x").is_under("Inbox/Projects"));
    }
}
