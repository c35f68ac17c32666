//! Drive backup through driveItem delta.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use m365bk_gate::{encode_segment, AuthorizedJob, DirectoryUser};
use m365bk_graph::{is_removed, DeltaJournal, DeltaStart, GraphClient, StoredVersion};
use m365bk_store::{
    BackupWriter, ContentRef, Item, ItemJournal, SkippedItem, Snapshot, SnapshotDraft, StoredItem,
};
use serde_json::{json, Value};

use crate::{kind, Error, Result};

/// Tunables of a drive backup.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// `Prefer: odata.maxpagesize` for delta pages.
    pub page_size: u32,
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Where delta pages are saved as they arrive, so a killed backup resumes its enumeration
    /// from the last page (collection `drive:{drive id}`); `None` keeps them in memory only.
    pub journal: Option<std::sync::Arc<dyn DeltaJournal>>,
    /// Where each file's content is recorded once stored (collection `drive:{drive id}`, the
    /// file's `cTag`), so a killed backup, resumed, reuses what the repository already holds
    /// instead of downloading it again; `None` records nothing.
    pub stored: Option<ItemJournal>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            page_size: 200,
            concurrency: 4,
            journal: None,
            stored: None,
        }
    }
}

/// The previous snapshot of the same drive.
#[derive(Clone, Debug)]
pub struct ParentSnapshot {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its items.
    pub items: Vec<Item>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Full enumerations started again after a lost sync state within one backup (the token of
/// an enumeration in progress can expire too); beyond this the drive fails.
const MAX_DELTA_RESTARTS: u32 = 3;

/// One driveItem as the backup tracks it while applying delta pages.
#[derive(Clone, Debug)]
struct Node {
    json: Value,
    parent: Option<String>,
    name: String,
    is_folder: bool,
    /// Content carried over from the parent snapshot (unchanged `cTag`).
    content: Option<ContentRef>,
    c_tag: Option<String>,
}

/// Backs up one user's OneDrive into a snapshot draft.
///
/// `GET /users/{id}/drive`, then driveItem delta from the parent's deltaLink (or from scratch);
/// a lost sync state (410 / `resyncRequired`) restarts the enumeration, still reusing content
/// whose `cTag` is unchanged. Each new or changed file is streamed from
/// `GET /drives/{id}/items/{id}/content` into the repository. A file whose download fails
/// keeps its previous version (if any) and is listed in `skipped`; the deltaLink is then not
/// advanced.
///
/// # Errors
/// Graph failures of the drive lookup or a delta page; repository failures.
pub async fn backup_drive(
    job: &AuthorizedJob,
    writer: &BackupWriter,
    user: &DirectoryUser,
    parent: Option<&ParentSnapshot>,
    opts: &BackupOptions,
) -> Result<SnapshotDraft> {
    let graph = job.graph();
    let drive: Value = job
        .directory()
        .user_drive(&user.id)
        .await
        .map_err(Error::graph(format!(
            "reading the drive of {}",
            user.user_principal_name
        )))?;
    let drive_id = str_field(&drive, "id")
        .ok_or_else(|| Error::Unexpected {
            what: format!("drive of {}", user.user_principal_name),
            detail: "no id".into(),
        })?
        .to_string();
    let did = encode_segment(&drive_id);

    // Start from the parent's tree when its deltaLink belongs to the same drive.
    let previous_link = parent
        .filter(|p| p.snapshot.state.get("drive_id").and_then(Value::as_str) == Some(&drive_id))
        .and_then(|p| p.snapshot.state.get("delta_link").and_then(Value::as_str))
        .map(str::to_string);
    let parent_nodes: HashMap<String, Node> = parent
        .map(|p| {
            p.items
                .iter()
                .map(|i| {
                    (
                        i.id.clone(),
                        Node {
                            json: i.metadata.clone(),
                            parent: i.parent_id.clone(),
                            name: str_field(&i.metadata, "name")
                                .unwrap_or_default()
                                .to_string(),
                            is_folder: i.kind == kind::FOLDER,
                            content: i.content.clone(),
                            c_tag: i.change_key.clone(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let root_of_parent = parent
        .and_then(|p| p.snapshot.state.get("root_id"))
        .and_then(Value::as_str)
        .map(str::to_string);

    // Content a killed run of this backup stored: reused like the parent's.
    let collection = format!("drive:{drive_id}");
    let stored: HashMap<String, StoredItem> = match &opts.stored {
        Some(journal) => journal.load(&collection).map_err(Error::store(format!(
            "reading the files stored by an interrupted backup of {}",
            user.user_principal_name
        )))?,
        None => HashMap::new(),
    };

    let initial = format!("/drives/{did}/root/delta");
    let (mut nodes, mut root_id, mut walker) = match &previous_link {
        Some(link) => (
            parent_nodes.clone(),
            root_of_parent.clone(),
            graph.delta(DeltaStart::Resume(link.clone()), Some(opts.page_size)),
        ),
        None => (
            HashMap::new(),
            None,
            graph.delta(DeltaStart::Initial(initial.clone()), Some(opts.page_size)),
        ),
    };
    if let Some(journal) = &opts.journal {
        walker = walker
            .with_journal(journal.clone(), collection.clone())
            .map_err(Error::graph(format!(
                "reading the saved delta progress of {}",
                user.user_principal_name
            )))?;
    }
    let mut delta_link = None;
    // Files whose content must be downloaded: id → (json).
    let mut dirty: HashMap<String, Value> = HashMap::new();
    // Files whose content comes from the journal of an interrupted run: confirmed below.
    let mut from_journal: HashSet<String> = HashSet::new();
    let mut restarts = 0;
    loop {
        let page = match walker.next_page().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(err) if restarts < MAX_DELTA_RESTARTS && err.is_sync_state_lost() => {
                tracing::warn!(drive = %drive_id, error = %err, "drive delta state lost: enumerating again (unchanged files are not downloaded again)");
                restarts += 1;
                nodes.clear();
                dirty.clear();
                from_journal.clear();
                root_id = None;
                delta_link = None;
                // From the 410's Location (driveItem delta sends one), else from the start.
                walker.restart(&initial);
                continue;
            }
            Err(err) => {
                return Err(Error::graph(format!(
                    "drive delta of {}",
                    user.user_principal_name
                ))(err))
            }
        };
        for mut it in page.items {
            let Some(id) = str_field(&it, "id").map(str::to_string) else {
                continue;
            };
            from_journal.remove(&id);
            if is_removed(&it) {
                nodes.remove(&id);
                dirty.remove(&id);
                continue;
            }
            if it.get("root").is_some() {
                root_id = Some(id.clone());
                continue;
            }
            // The pre-authenticated download URL is a bearer credential: never store it.
            if let Value::Object(map) = &mut it {
                map.remove("@microsoft.graph.downloadUrl");
                map.remove("@content.downloadUrl");
            }
            let is_folder = it.get("folder").is_some()
                || it.get("package").is_some() && it.get("file").is_none();
            let c_tag = str_field(&it, "cTag").map(str::to_string);
            // Unchanged content (same cTag) is reused when every blob is stored: from the
            // tree so far or the parent snapshot, else from an interrupted run of this backup.
            let known = nodes.get(&id).or_else(|| parent_nodes.get(&id));
            let content = match c_tag.as_deref() {
                Some(tag) if !is_folder => {
                    let unchanged = known
                        .filter(|n| n.c_tag.as_deref() == Some(tag))
                        .and_then(|n| n.content.as_ref())
                        .filter(|c| writer.contains(c));
                    let journaled = stored
                        .get(&id)
                        .filter(|s| s.version == tag)
                        .map(|s| &s.content)
                        .filter(|c| writer.contains(c));
                    if unchanged.is_none() && journaled.is_some() {
                        from_journal.insert(id.clone());
                    }
                    unchanged.or(journaled).cloned()
                }
                _ => None,
            };
            if !is_folder && content.is_none() {
                dirty.insert(id.clone(), it.clone());
            } else {
                dirty.remove(&id);
            }
            nodes.insert(
                id,
                Node {
                    parent: it
                        .get("parentReference")
                        .and_then(|p| str_field(p, "id"))
                        .map(str::to_string),
                    name: str_field(&it, "name").unwrap_or_default().to_string(),
                    is_folder,
                    content,
                    c_tag,
                    json: it,
                },
            );
        }
        if page.delta_link.is_some() {
            delta_link = page.delta_link;
        }
    }

    // Journaled files may come from saved pages older than the drive: each must still be
    // there with the same cTag, else it is downloaded (or dropped, if gone).
    if !from_journal.is_empty() {
        let ids: Vec<(String, String)> = from_journal
            .iter()
            .filter_map(|id| Some((id.clone(), nodes.get(id)?.c_tag.clone()?)))
            .collect();
        let checks: Vec<(String, String)> = ids
            .iter()
            .map(|(id, c_tag)| {
                let url = format!("/drives/{did}/items/{}?$select=id,cTag", encode_segment(id));
                (url, c_tag.clone())
            })
            .collect();
        let checked: HashMap<String, StoredVersion> = match graph
            .confirm_versions(&checks, "cTag")
            .await
        {
            Ok(versions) => ids.into_iter().map(|(id, _)| id).zip(versions).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot confirm the files an interrupted backup stored: downloading them again");
                HashMap::new()
            }
        };
        for id in from_journal {
            match checked.get(&id) {
                Some(StoredVersion::Unchanged) => {}
                Some(StoredVersion::Gone) => {
                    tracing::debug!(item = %id, "file stored by an interrupted backup is gone");
                    nodes.remove(&id);
                }
                _ => {
                    if let Some(node) = nodes.get_mut(&id) {
                        node.content = None;
                        dirty.insert(id, node.json.clone());
                    }
                }
            }
        }
    }

    // A file carried over from the parent whose content the repository no longer holds in
    // full (its pack was lost, or `repair index` dropped a damaged blob) is downloaded
    // again, never referred to.
    for (id, node) in nodes.iter_mut() {
        if node.is_folder || dirty.contains_key(id) {
            continue;
        }
        if node.content.as_ref().is_some_and(|c| !writer.contains(c)) {
            tracing::info!(item = %id, name = %node.name, "stored content incomplete in the repository: downloading the file again");
            node.content = None;
            dirty.insert(id.clone(), node.json.clone());
        }
    }

    // Paths from parent ids; anything not reachable from the root was deleted with a folder.
    let paths = resolve_paths(&nodes, root_id.as_deref());
    let mut draft_items = Vec::new();
    let mut skipped = Vec::new();
    let mut to_fetch = Vec::new();
    for (id, node) in &nodes {
        let Some(path) = paths.get(id) else { continue };
        if dirty.contains_key(id) {
            to_fetch.push((id.clone(), path.clone()));
            continue;
        }
        draft_items.push(node_item(id, node, path, node.content.clone()));
    }
    let fetched: Vec<(String, String, Result<ContentRef>)> = futures::stream::iter(to_fetch)
        .map(|(id, path)| async {
            let r = fetch_content(graph, writer, &did, &id).await;
            if let (Ok(content), Some(journal), Some(tag)) =
                (&r, &opts.stored, nodes[&id].c_tag.as_ref())
            {
                let entry = StoredItem {
                    item_id: id.clone(),
                    kind: kind::FILE.into(),
                    version: tag.clone(),
                    content: content.clone(),
                };
                if let Err(e) = journal.record(&collection, &entry) {
                    tracing::warn!(path = %path, error = %e, "file stored, but not recorded for a resumed backup");
                }
            }
            (id, path, r)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut failed = false;
    for (id, path, r) in fetched {
        let node = &nodes[&id];
        match r {
            Ok(content) => draft_items.push(node_item(&id, node, &path, Some(content))),
            Err(Error::Graph { source, .. }) if source.status() == Some(404) => {
                tracing::debug!(path = %path, "file vanished before download");
            }
            Err(err) => {
                failed = true;
                tracing::warn!(path = %path, error = %err, "file not backed up");
                // Only a previous version the repository still holds in full.
                let kept = parent_nodes
                    .get(&id)
                    .filter(|n| n.content.as_ref().is_some_and(|c| writer.contains(c)));
                let reason = if kept.is_some() {
                    format!("{err}; kept the previous version")
                } else {
                    err.to_string()
                };
                if let Some(n) = kept {
                    draft_items.push(node_item(&id, n, &path, n.content.clone()));
                }
                skipped.push(SkippedItem { path, id, reason });
            }
        }
    }
    draft_items.sort_by(|a, b| a.path.cmp(&b.path));
    let link = if failed { previous_link } else { delta_link };
    Ok(SnapshotDraft {
        service: "onedrive".into(),
        resource_id: user.id.clone(),
        resource_name: user.user_principal_name.clone(),
        job_id: job.spec().id.to_string(),
        tags: Vec::new(),
        selection: Vec::new(),
        parent: parent.map(|p| p.snapshot.id),
        items: draft_items,
        state: json!({ "drive_id": drive_id, "root_id": root_id, "delta_link": link }),
        skipped,
    })
}

fn node_item(id: &str, node: &Node, path: &str, content: Option<ContentRef>) -> Item {
    Item {
        kind: if node.is_folder {
            kind::FOLDER
        } else {
            kind::FILE
        }
        .into(),
        id: id.to_string(),
        parent_id: node.parent.clone(),
        path: path.to_string(),
        change_key: node.c_tag.clone(),
        // A folder's Graph `size` is the size of its whole subtree: counting it would add every
        // file twice to the snapshot's total. Items count their own bytes only.
        size: if node.is_folder {
            0
        } else {
            content
                .as_ref()
                .map(|c| c.size)
                .unwrap_or_else(|| node.json.get("size").and_then(Value::as_u64).unwrap_or(0))
        },
        modified: str_field(&node.json, "lastModifiedDateTime")
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
        metadata: node.json.clone(),
        content,
    }
}

/// Display paths (relative to the root, `/`-separated) of every node whose parent chain
/// reaches `root`.
fn resolve_paths(nodes: &HashMap<String, Node>, root: Option<&str>) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for id in nodes.keys() {
        let mut chain = Vec::new();
        let mut cur = Some(id.as_str());
        let mut ok = false;
        while let Some(c) = cur {
            if Some(c) == root {
                ok = true;
                break;
            }
            if let Some(p) = out.get(c) {
                chain.push(p.clone());
                ok = true;
                break;
            }
            let Some(n) = nodes.get(c) else { break };
            if chain.len() > 4096 {
                break; // a cycle: Graph never sends one, but don't hang if it did
            }
            chain.push(n.name.replace('/', "\u{2215}"));
            cur = n.parent.as_deref();
        }
        if ok && !chain.is_empty() {
            chain.reverse();
            out.insert(id.clone(), chain.join("/"));
        }
    }
    out
}

/// Streams a file's content (`GET /drives/{id}/items/{id}/content`, 302 to a
/// pre-authenticated URL, https://learn.microsoft.com/graph/api/driveitem-get-content).
async fn fetch_content(
    graph: &GraphClient,
    writer: &BackupWriter,
    did: &str,
    item_id: &str,
) -> Result<ContentRef> {
    let what = format!("downloading driveItem {item_id}");
    let download = graph
        .download(&format!(
            "/drives/{did}/items/{}/content",
            encode_segment(item_id)
        ))
        .await
        .map_err(Error::graph(what.clone()))?;
    let mut stream = download.into_stream();
    let mut cw = writer.content_writer();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(Error::graph(what.clone()))?
    {
        cw.write(&chunk).await.map_err(Error::store(what.clone()))?;
    }
    cw.finish().await.map_err(Error::store(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, parent: &str, folder: bool) -> Node {
        Node {
            json: json!({}),
            parent: Some(parent.into()),
            name: name.into(),
            is_folder: folder,
            content: None,
            c_tag: None,
        }
    }

    #[test]
    fn paths_follow_parent_ids_and_drop_orphans() {
        let mut nodes = HashMap::new();
        nodes.insert("a".to_string(), node("Documents", "root", true));
        nodes.insert("b".to_string(), node("Report 2026.docx", "a", false));
        nodes.insert("c".to_string(), node("orphan.txt", "gone", false));
        nodes.insert("d".to_string(), node("x/y.txt", "a", false));
        let p = resolve_paths(&nodes, Some("root"));
        assert_eq!(p["a"], "Documents");
        assert_eq!(p["b"], "Documents/Report 2026.docx");
        assert_eq!(p["d"], "Documents/x\u{2215}y.txt");
        assert!(!p.contains_key("c"));
    }
}
