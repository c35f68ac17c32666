//! Mailbox backup: folders, messages (MIME), contacts, events, settings; incremental by delta.

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt, TryStreamExt};
use m365bk_gate::{encode_segment, AuthorizedJob, DirectoryUser, ItemType};
use m365bk_graph::{
    is_removed, BatchRequest, BatchResponse, DeltaJournal, DeltaStart, GraphClient, StoredVersion,
};
use m365bk_store::{
    BackupWriter, ContentRef, Item, ItemJournal, SkippedItem, Snapshot, SnapshotDraft, StoredItem,
};
use serde_json::{json, Value};

use crate::{kind, Error, Result};

/// Tunables of a mailbox backup.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// `Prefer: odata.maxpagesize` for delta and list requests (Graph allows up to 1000 for
    /// messages; 100 keeps pages small enough to retry cheaply).
    pub page_size: u32,
    /// Messages downloaded at once per mailbox. Outlook allows 4 concurrent requests per
    /// mailbox (https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits).
    pub concurrency: usize,
    /// Where delta pages are saved as they arrive, so a killed backup resumes each
    /// collection's enumeration from its last page (collection = the delta path); `None`
    /// keeps them in memory only.
    pub journal: Option<std::sync::Arc<dyn DeltaJournal>>,
    /// Where each message's MIME is recorded once stored (collection = the folder's delta
    /// path, the message's `changeKey`), so a killed backup, resumed, reuses what the
    /// repository already holds instead of downloading it again; `None` records nothing.
    pub stored: Option<ItemJournal>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            page_size: 100,
            concurrency: 4,
            journal: None,
            stored: None,
        }
    }
}

/// The previous snapshot of the same mailbox, whose items and delta links make the backup
/// incremental.
#[derive(Clone, Debug)]
pub struct ParentSnapshot {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its items.
    pub items: Vec<Item>,
}

/// Full enumerations started again after a lost sync state within one delta round (the
/// token of a round in progress can expire too); beyond this the collection fails.
const MAX_DELTA_RESTARTS: u32 = 3;

/// The net effect of one delta round over a collection.
struct DeltaOutcome {
    /// id → new state (`None` = removed); the last report of an id wins.
    changes: BTreeMap<String, Option<Value>>,
    /// Order in which ids were first reported (for stable output).
    order: Vec<String>,
    /// The deltaLink to resume from next time.
    delta_link: Option<String>,
    /// True when this was a full enumeration (no or lost previous state): the changes are
    /// then the whole collection.
    full: bool,
}

async fn walk_delta(
    graph: &GraphClient,
    initial_path: String,
    previous_link: Option<&str>,
    page_size: u32,
    journal: Option<&std::sync::Arc<dyn DeltaJournal>>,
) -> m365bk_graph::Result<DeltaOutcome> {
    let (start, mut full) = match previous_link {
        Some(link) => (DeltaStart::Resume(link.to_string()), false),
        None => (DeltaStart::Initial(initial_path.clone()), true),
    };
    let mut walker = graph.delta(start, Some(page_size));
    if let Some(journal) = journal {
        walker = walker.with_journal(journal.clone(), initial_path.clone())?;
    }
    let mut outcome = DeltaOutcome {
        changes: BTreeMap::new(),
        order: Vec::new(),
        delta_link: None,
        full,
    };
    let mut restarts = 0;
    loop {
        let page = match walker.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(err) if restarts < MAX_DELTA_RESTARTS && err.is_sync_state_lost() => {
                tracing::warn!(
                    path = %initial_path,
                    error = %err,
                    "delta state expired or invalid: enumerating the collection again (unchanged items are not downloaded again)"
                );
                restarts += 1;
                full = true;
                outcome = DeltaOutcome {
                    changes: BTreeMap::new(),
                    order: Vec::new(),
                    delta_link: None,
                    full,
                };
                // From the 410's Location when Microsoft gave one, else from the start.
                walker.restart(&initial_path);
                continue;
            }
            Err(err) => return Err(err),
        };
        for item in page.items {
            let Some(id) = item.get("id").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let state = if is_removed(&item) { None } else { Some(item) };
            if !outcome.changes.contains_key(&id) {
                outcome.order.push(id.clone());
            }
            outcome.changes.insert(id, state);
        }
        if page.delta_link.is_some() {
            outcome.delta_link = page.delta_link;
        }
    }
    Ok(outcome)
}

/// Merges a delta outcome into the parent's items of one collection: returns the carried-over
/// items and the new or changed Graph objects (in report order).
fn merge(parent: &[&Item], outcome: &DeltaOutcome) -> (Vec<Item>, Vec<Value>) {
    let carried = if outcome.full {
        Vec::new()
    } else {
        parent
            .iter()
            .filter(|i| !outcome.changes.contains_key(&i.id))
            .map(|i| (*i).clone())
            .collect()
    };
    let changed = outcome
        .order
        .iter()
        .filter_map(|id| outcome.changes.get(id).cloned().flatten())
        .collect();
    (carried, changed)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn time_field(v: &Value, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    str_field(v, key)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A display path segment: Graph display names may hold `/`.
fn segment(name: &str) -> String {
    name.replace('/', "\u{2215}")
}

struct Folder {
    id: String,
    path: String,
    json: Value,
}

/// Every `mailFolder` of the mailbox, parents before children, from the first page of
/// `mailFolders` (read in the mailbox's first batch): each breadth-first level's `childFolders`
/// first pages go in JSON batches of up to 20, later pages by `nextLink`
/// (https://learn.microsoft.com/graph/api/user-list-mailfolders,
/// https://learn.microsoft.com/graph/api/mailfolder-list-childfolders,
/// https://learn.microsoft.com/graph/json-batching).
async fn list_mail_folders(
    graph: &GraphClient,
    uid: &str,
    first_page: &BatchResponse,
) -> m365bk_graph::Result<Vec<Folder>> {
    let mut out = Vec::new();
    let top: Vec<Value> = graph.list_from_batch(first_page).await?;
    let mut level: Vec<(Value, String)> = top
        .into_iter()
        .map(|f| {
            let path = segment(str_field(&f, "displayName").unwrap_or("(unnamed)"));
            (f, path)
        })
        .collect();
    while !level.is_empty() {
        let mut parents: Vec<String> = Vec::new();
        let mut requests = Vec::new();
        for (json, path) in &level {
            let Some(id) = str_field(json, "id") else {
                continue;
            };
            if json
                .get("childFolderCount")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                > 0
            {
                requests.push(BatchRequest::get(
                    requests.len().to_string(),
                    format!(
                        "/users/{uid}/mailFolders/{}/childFolders?includeHiddenFolders=true&$top=100",
                        encode_segment(id)
                    ),
                ));
                parents.push(path.clone());
            }
        }
        let answers = if requests.is_empty() {
            Vec::new()
        } else {
            graph.batch(requests).await?
        };
        let mut next = Vec::new();
        for (answer, path) in answers.iter().zip(parents) {
            let children: Vec<Value> = graph.list_from_batch(answer).await?;
            for c in children {
                let p = format!(
                    "{path}/{}",
                    segment(str_field(&c, "displayName").unwrap_or("(unnamed)"))
                );
                next.push((c, p));
            }
        }
        for (json, path) in std::mem::replace(&mut level, next) {
            if let Some(id) = str_field(&json, "id").map(str::to_string) {
                out.push(Folder { id, path, json });
            }
        }
    }
    Ok(out)
}

/// The first reads of a mailbox backup that the job's item types need, sent as one JSON batch
/// (https://learn.microsoft.com/graph/json-batching) instead of one round trip each: the
/// first page of `mailFolders` (mail), of `contactFolders` and one contact's
/// `parentFolderId` (contacts), `mailboxSettings`.
struct FirstReads {
    mail_folders: Option<BatchResponse>,
    contact_folders: Option<BatchResponse>,
    default_contact: Option<BatchResponse>,
    mailbox_settings: Option<BatchResponse>,
}

async fn first_reads(
    graph: &GraphClient,
    uid: &str,
    types: &std::collections::BTreeSet<ItemType>,
    upn: &str,
) -> Result<FirstReads> {
    const MAIL_FOLDERS: &str = "mailFolders";
    const CONTACT_FOLDERS: &str = "contactFolders";
    const DEFAULT_CONTACT: &str = "defaultContactFolder";
    const SETTINGS: &str = "mailboxSettings";
    let mut requests = Vec::new();
    if types.contains(&ItemType::Mail) {
        requests.push(BatchRequest::get(
            MAIL_FOLDERS,
            format!("/users/{uid}/mailFolders?includeHiddenFolders=true&$top=100"),
        ));
    }
    if types.contains(&ItemType::Contacts) {
        requests.push(BatchRequest::get(
            CONTACT_FOLDERS,
            format!("/users/{uid}/contactFolders?$top=100"),
        ));
        requests.push(BatchRequest::get(
            DEFAULT_CONTACT,
            format!("/users/{uid}/contacts?$top=1&$select=parentFolderId"),
        ));
    }
    if types.contains(&ItemType::MailboxSettings) {
        requests.push(BatchRequest::get(
            SETTINGS,
            format!("/users/{uid}/mailboxSettings"),
        ));
    }
    let mut answers = if requests.is_empty() {
        Vec::new()
    } else {
        graph.batch(requests).await.map_err(Error::graph(format!(
            "reading the folder lists and settings of {upn} (one JSON batch)"
        )))?
    };
    let mut take = |id: &str| {
        answers
            .iter()
            .position(|a| a.id == id)
            .map(|i| answers.swap_remove(i))
    };
    Ok(FirstReads {
        mail_folders: take(MAIL_FOLDERS),
        contact_folders: take(CONTACT_FOLDERS),
        default_contact: take(DEFAULT_CONTACT),
        mailbox_settings: take(SETTINGS),
    })
}

/// Collects the result of one mailbox backup.
struct Draft {
    items: Vec<Item>,
    skipped: Vec<SkippedItem>,
    state: serde_json::Map<String, Value>,
}

/// Backs up one mailbox into a snapshot draft (not yet committed: the caller commits it with
/// [`BackupWriter::commit_snapshot`] once it returns).
///
/// Item types follow the job's selection. With `parent`, each collection resumes from the
/// parent's deltaLink; a lost sync state falls back to a full enumeration that still reuses
/// stored content of messages whose `changeKey` is unchanged. A message whose download fails
/// keeps its previous version (if any), is listed in `skipped`, and its folder's deltaLink is
/// not advanced, so the next backup asks for it again.
///
/// # Errors
/// A Graph failure that affects the whole mailbox (listing folders, a delta round, mailbox
/// settings), or a repository failure.
pub async fn backup_mailbox(
    job: &AuthorizedJob,
    writer: &BackupWriter,
    user: &DirectoryUser,
    parent: Option<&ParentSnapshot>,
    opts: &BackupOptions,
) -> Result<SnapshotDraft> {
    let graph = job.graph();
    let uid = encode_segment(&user.id);
    let types = &job.spec().selection.item_types;
    let parent_items: &[Item] = parent.map(|p| p.items.as_slice()).unwrap_or(&[]);
    let parent_state = parent.map(|p| &p.snapshot.state);
    let mut draft = Draft {
        items: Vec::new(),
        skipped: Vec::new(),
        state: serde_json::Map::new(),
    };
    let first = first_reads(graph, &uid, types, &user.user_principal_name).await?;

    if let Some(mail_folders) = &first.mail_folders {
        backup_mail(
            graph,
            writer,
            &uid,
            mail_folders,
            parent_items,
            parent_state,
            opts,
            &mut draft,
        )
        .await?;
    }
    if let (Some(contact_folders), Some(default_contact)) =
        (&first.contact_folders, &first.default_contact)
    {
        let mut folders: Vec<Value> =
            graph
                .list_from_batch(contact_folders)
                .await
                .map_err(Error::graph(format!(
                    "listing contact folders of {}",
                    user.user_principal_name
                )))?;
        // `contactFolders` lists the folders inside the default Contacts folder, not the
        // default folder itself (https://learn.microsoft.com/graph/api/user-list-contactfolders);
        // its id is the parentFolderId of the contacts it holds.
        let sample: Value = default_contact.json().map_err(Error::graph(format!(
            "finding the default contact folder of {}",
            user.user_principal_name
        )))?;
        if let Some(default_id) = sample
            .get("value")
            .and_then(|v| v.get(0))
            .and_then(|c| str_field(c, "parentFolderId"))
        {
            if !folders
                .iter()
                .any(|f| str_field(f, "id") == Some(default_id))
            {
                folders.insert(0, json!({ "id": default_id, "displayName": "Contacts" }));
            }
        }
        let mut links = serde_json::Map::new();
        for f in folders {
            let Some(fid) = str_field(&f, "id").map(str::to_string) else {
                continue;
            };
            let path = format!(
                "Contacts/{}",
                segment(str_field(&f, "displayName").unwrap_or("Contacts"))
            );
            let previous = link_of(parent_state, "contacts", &fid);
            let outcome = walk_delta(
                graph,
                format!(
                    "/users/{uid}/contactFolders/{}/contacts/delta",
                    encode_segment(&fid)
                ),
                previous.as_deref(),
                opts.page_size,
                opts.journal.as_ref(),
            )
            .await
            .map_err(Error::graph(format!("contact delta of {path}")))?;
            let in_folder: Vec<&Item> = parent_items
                .iter()
                .filter(|i| i.kind == kind::CONTACT && i.parent_id.as_deref() == Some(&fid))
                .collect();
            let (carried, changed) = merge(&in_folder, &outcome);
            draft.items.push(Item {
                kind: kind::CONTACT_FOLDER.into(),
                id: fid.clone(),
                parent_id: None,
                path: path.clone(),
                change_key: None,
                size: 0,
                modified: None,
                metadata: f.clone(),
                content: None,
            });
            draft.items.extend(carried);
            for c in changed {
                draft
                    .items
                    .push(json_item(kind::CONTACT, &fid, &path, "displayName", c));
            }
            if let Some(link) = outcome.delta_link {
                links.insert(fid, Value::String(link));
            }
        }
        draft.state.insert("contacts".into(), Value::Object(links));
    }
    if types.contains(&ItemType::Calendar) {
        let previous = parent_state
            .and_then(|s| s.get("calendar"))
            .and_then(Value::as_str)
            .map(str::to_string);
        // calendarView delta needs a window; this one covers every event a mailbox can hold.
        let outcome = walk_delta(
            graph,
            format!("/users/{uid}/calendarView/delta?startDateTime=1900-01-01T00:00:00Z&endDateTime=2100-01-01T00:00:00Z"),
            previous.as_deref(),
            opts.page_size,
            opts.journal.as_ref(),
        )
        .await
        .map_err(Error::graph(format!("calendar delta of {}", user.user_principal_name)))?;
        let parent_events: Vec<&Item> = parent_items
            .iter()
            .filter(|i| i.kind == kind::EVENT)
            .collect();
        let (carried, changed) = merge(&parent_events, &outcome);
        draft.items.extend(carried);
        for e in changed {
            draft
                .items
                .push(json_item(kind::EVENT, "calendar", "Calendar", "subject", e));
        }
        if let Some(link) = outcome.delta_link {
            draft.state.insert("calendar".into(), Value::String(link));
        }
    }
    if let Some(mailbox_settings) = &first.mailbox_settings {
        let settings: Value = mailbox_settings.json().map_err(Error::graph(format!(
            "reading mailboxSettings of {}",
            user.user_principal_name
        )))?;
        draft.items.push(Item {
            kind: kind::MAILBOX_SETTINGS.into(),
            id: "mailboxSettings".into(),
            parent_id: None,
            path: "mailboxSettings".into(),
            change_key: None,
            size: 0,
            modified: None,
            metadata: settings,
            content: None,
        });
    }
    if types.contains(&ItemType::OneNote) {
        draft.state.insert(
            "notes".into(),
            json!(["OneNote: the OneNote API has refused app-only tokens since 2025-03-31; notebooks are files in the user's OneDrive (package facet, .one sections) and are protected by the onedrive service"]),
        );
    }

    Ok(SnapshotDraft {
        service: "exchange".into(),
        resource_id: user.id.clone(),
        resource_name: user.user_principal_name.clone(),
        job_id: job.spec().id.to_string(),
        tags: Vec::new(),
        // Recorded only for a subset (`backup --items`), so `forget` keeps it apart.
        selection: if types.len() == ItemType::ALL.len() {
            Vec::new()
        } else {
            types.iter().map(|t| t.as_str().to_owned()).collect()
        },
        parent: parent.map(|p| p.snapshot.id),
        items: draft.items,
        state: Value::Object(draft.state),
        skipped: draft.skipped,
    })
}

fn link_of(state: Option<&Value>, area: &str, id: &str) -> Option<String> {
    state?.get(area)?.get(id)?.as_str().map(str::to_string)
}

fn json_item(kind: &str, parent: &str, parent_path: &str, title_key: &str, v: Value) -> Item {
    let title = str_field(&v, title_key).unwrap_or("(untitled)");
    Item {
        kind: kind.into(),
        id: str_field(&v, "id").unwrap_or_default().to_string(),
        parent_id: Some(parent.to_string()),
        path: format!("{parent_path}/{}", segment(title)),
        change_key: str_field(&v, "changeKey").map(str::to_string),
        size: 0,
        modified: time_field(&v, "lastModifiedDateTime"),
        metadata: v,
        content: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn backup_mail(
    graph: &GraphClient,
    writer: &BackupWriter,
    uid: &str,
    first_folder_page: &BatchResponse,
    parent_items: &[Item],
    parent_state: Option<&Value>,
    opts: &BackupOptions,
    draft: &mut Draft,
) -> Result<()> {
    let folders = list_mail_folders(graph, uid, first_folder_page)
        .await
        .map_err(Error::graph(format!("listing mail folders of user {uid}")))?;
    let parent_by_id: HashMap<&str, &Item> = parent_items
        .iter()
        .filter(|i| i.kind == kind::MESSAGE)
        .map(|i| (i.id.as_str(), i))
        .collect();
    let mut links = serde_json::Map::new();
    for folder in folders {
        let previous = link_of(parent_state, "mail", &folder.id);
        let collection = format!(
            "/users/{uid}/mailFolders/{}/messages/delta",
            encode_segment(&folder.id)
        );
        // MIME a killed run of this backup stored: reused like the parent's.
        let stored: HashMap<String, StoredItem> = match &opts.stored {
            Some(journal) => journal.load(&collection).map_err(Error::store(format!(
                "reading the messages stored by an interrupted backup of folder {}",
                folder.path
            )))?,
            None => HashMap::new(),
        };
        let outcome = walk_delta(
            graph,
            collection.clone(),
            previous.as_deref(),
            opts.page_size,
            opts.journal.as_ref(),
        )
        .await
        .map_err(Error::graph(format!(
            "message delta of folder {}",
            folder.path
        )))?;
        let in_folder: Vec<&Item> = parent_items
            .iter()
            .filter(|i| i.kind == kind::MESSAGE && i.parent_id.as_deref() == Some(&folder.id))
            .collect();
        let (carried, mut changed) = merge(&in_folder, &outcome);
        // An unchanged message whose MIME the repository no longer holds in full (its pack
        // was lost, or `repair index` dropped a damaged blob) is downloaded again, never
        // referred to.
        let (carried, lost): (Vec<Item>, Vec<Item>) = carried
            .into_iter()
            .partition(|i| i.content.as_ref().is_none_or(|c| writer.contains(c)));
        for item in lost {
            tracing::info!(message = %item.id, folder = %folder.path, "stored MIME incomplete in the repository: downloading the message again");
            changed.push(item.metadata);
        }
        draft.items.push(Item {
            kind: kind::MAIL_FOLDER.into(),
            id: folder.id.clone(),
            parent_id: str_field(&folder.json, "parentFolderId").map(str::to_string),
            path: folder.path.clone(),
            change_key: None,
            size: 0,
            modified: None,
            metadata: folder.json.clone(),
            content: None,
        });
        draft.items.extend(carried);

        // Reuse stored MIME when the message is unchanged (same id and changeKey) and every
        // blob is stored: from the parent snapshot (after a lost sync state forced a full
        // enumeration), else from an interrupted run of this backup.
        let mut to_fetch = Vec::new();
        let mut from_journal = Vec::new();
        for m in changed {
            let id = str_field(&m, "id").unwrap_or_default();
            let Some(ck) = str_field(&m, "changeKey") else {
                to_fetch.push(m);
                continue;
            };
            let unchanged = parent_by_id
                .get(id)
                .filter(|p| p.change_key.as_deref() == Some(ck))
                .and_then(|p| p.content.as_ref())
                .filter(|c| writer.contains(c));
            let journaled = stored
                .get(id)
                .filter(|s| s.version == ck)
                .map(|s| &s.content)
                .filter(|c| writer.contains(c));
            match (unchanged, journaled) {
                (Some(content), _) => {
                    let content = content.clone();
                    draft.items.push(message_item(&folder, m, content));
                }
                (None, Some(content)) => {
                    let content = content.clone();
                    from_journal.push((m, content));
                }
                (None, None) => to_fetch.push(m),
            }
        }
        // Journaled messages may come from saved pages older than the mailbox: each must still
        // be there with the same changeKey, else it is downloaded (or dropped, if gone).
        if !from_journal.is_empty() {
            let checks: Vec<(String, String)> = from_journal
                .iter()
                .map(|(m, _)| {
                    let id = encode_segment(str_field(m, "id").unwrap_or_default());
                    let ck = str_field(m, "changeKey").unwrap_or_default().to_string();
                    (
                        format!("/users/{uid}/messages/{id}?$select=id,changeKey"),
                        ck,
                    )
                })
                .collect();
            let checked = graph
                .confirm_versions(&checks, "changeKey")
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot confirm the messages an interrupted backup stored: downloading them again");
                    vec![StoredVersion::Unknown; checks.len()]
                });
            for ((m, content), version) in from_journal.into_iter().zip(checked) {
                match version {
                    StoredVersion::Unchanged => draft.items.push(message_item(&folder, m, content)),
                    StoredVersion::Gone => {
                        tracing::debug!(message = %str_field(&m, "id").unwrap_or_default(), "message stored by an interrupted backup is gone");
                    }
                    StoredVersion::Unknown => to_fetch.push(m),
                }
            }
        }
        let folder_path = folder.path.clone();
        let fetched: Vec<(Value, Result<ContentRef>)> = futures::stream::iter(to_fetch)
            .map(|m| async {
                let id = str_field(&m, "id").unwrap_or_default().to_string();
                let r = fetch_mime(graph, writer, uid, &id).await;
                if let (Ok(content), Some(journal), Some(ck)) =
                    (&r, &opts.stored, str_field(&m, "changeKey"))
                {
                    let entry = StoredItem {
                        item_id: id.clone(),
                        kind: kind::MESSAGE.into(),
                        version: ck.to_string(),
                        content: content.clone(),
                    };
                    if let Err(e) = journal.record(&collection, &entry) {
                        tracing::warn!(message = %id, error = %e, "message stored, but not recorded for a resumed backup");
                    }
                }
                (m, r)
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        let mut failed = false;
        for (m, r) in fetched {
            let id = str_field(&m, "id").unwrap_or_default().to_string();
            match r {
                Ok(content) => draft.items.push(message_item(&folder, m, content)),
                Err(Error::Graph { source, .. }) if source.status() == Some(404) => {
                    // Deleted between the delta round and the download: the next delta
                    // round reports the removal.
                    tracing::debug!(message = %id, "message vanished before download");
                }
                Err(err) => {
                    failed = true;
                    let path = message_path(&folder_path, &m);
                    // Only a previous version the repository still holds in full.
                    let kept = parent_by_id
                        .get(id.as_str())
                        .filter(|p| p.content.as_ref().is_none_or(|c| writer.contains(c)))
                        .map(|p| (*p).clone());
                    let reason = if kept.is_some() {
                        format!("{err}; kept the previous version")
                    } else {
                        err.to_string()
                    };
                    tracing::warn!(path = %path, error = %err, "message not backed up");
                    draft.skipped.push(SkippedItem { path, id, reason });
                    draft.items.extend(kept);
                }
            }
        }
        // Advance the folder's sync state only if every change was stored; otherwise keep
        // the previous one so the next backup is told about the failed items again.
        let link = if failed { previous } else { outcome.delta_link };
        if let Some(link) = link {
            links.insert(folder.id.clone(), Value::String(link));
        }
    }
    draft.state.insert("mail".into(), Value::Object(links));
    Ok(())
}

/// A message of `folder` with its stored MIME.
fn message_item(folder: &Folder, m: Value, content: ContentRef) -> Item {
    Item {
        kind: kind::MESSAGE.into(),
        id: str_field(&m, "id").unwrap_or_default().to_string(),
        parent_id: Some(folder.id.clone()),
        path: message_path(&folder.path, &m),
        change_key: str_field(&m, "changeKey").map(str::to_string),
        size: content.size,
        modified: time_field(&m, "lastModifiedDateTime"),
        metadata: m,
        content: Some(content),
    }
}

fn message_path(folder_path: &str, m: &Value) -> String {
    let subject = str_field(m, "subject").unwrap_or("");
    let subject = if subject.is_empty() {
        "(no subject)"
    } else {
        subject
    };
    let short: String = subject.chars().take(120).collect();
    format!("{folder_path}/{}", segment(&short))
}

/// Streams one message's MIME (`GET /users/{id}/messages/{id}/$value`,
/// https://learn.microsoft.com/graph/outlook-get-mime-message) into the repository.
async fn fetch_mime(
    graph: &GraphClient,
    writer: &BackupWriter,
    uid: &str,
    message_id: &str,
) -> Result<ContentRef> {
    let what = format!("downloading MIME of message {message_id}");
    let download = graph
        .download(&format!(
            "/users/{uid}/messages/{}/$value",
            encode_segment(message_id)
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
