//! Mailbox restore: messages from MIME into a new folder tree, contacts, events.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use m365bk_gate::{encode_segment, AuthorizedJob, DirectoryUser};
use m365bk_graph::GraphClient;
use m365bk_store::{Item, Repository};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{kind, Error, Result};

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Target mailbox: user principal name or object id (the source user for an in-place
    /// restore, another user for a cross-user restore).
    pub target_user: String,
    /// Name of the new top-level folder (and contact folder, and calendar) the items are
    /// restored into, e.g. `Restored-2026-11-29T12-00-00Z`.
    pub folder_name: String,
    /// Only items whose path starts with one of these (e.g. `Inbox/Projects`); empty = all.
    pub path_prefixes: Vec<String>,
    /// Messages posted at once (Outlook allows 4 concurrent requests per mailbox).
    pub concurrency: usize,
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The target user's principal name.
    pub target: String,
    /// The folder everything went into.
    pub folder: String,
    /// Messages created.
    pub messages: u64,
    /// MIME bytes written.
    pub bytes: u64,
    /// Mail folders created.
    pub folders: u64,
    /// Contacts created.
    pub contacts: u64,
    /// Events created.
    pub events: u64,
    /// Items that could not be restored: (path, reason).
    pub failed: Vec<(String, String)>,
}

fn selected(item: &Item, prefixes: &[String]) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| item.is_under(p))
}

/// Server-assigned properties that a create request must not carry.
fn writable(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        map.retain(|k, _| {
            !k.starts_with('@')
                && !k.contains("@odata")
                && !matches!(
                    k.as_str(),
                    "id" | "changeKey"
                        | "createdDateTime"
                        | "lastModifiedDateTime"
                        | "parentFolderId"
                        | "iCalUId"
                        | "webLink"
                        | "onlineMeetingUrl"
                        | "calendar"
                        | "instances"
                )
        });
    }
    v
}

async fn create_folder(graph: &GraphClient, path: &str, name: &str) -> Result<String> {
    let created: Value = graph
        .post_json(path, &json!({ "displayName": name }))
        .await
        .map_err(Error::graph(format!("creating folder {name:?}")))?;
    created
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::Unexpected {
            what: format!("created folder {name:?}"),
            detail: "no id in the response".into(),
        })
}

/// Restores `items` (from one Exchange snapshot) into `opts.target_user`'s mailbox under a new
/// folder `opts.folder_name`: the snapshot's `mailFolder` tree is recreated below it and each
/// message is created from its stored MIME (`POST /users/{id}/mailFolders/{id}/messages` with
/// a base64 MIME body, https://learn.microsoft.com/graph/api/user-post-messages); contacts go
/// to a new contact folder and events to a new calendar of the same name. Mailbox settings are
/// not written back: the recovery permissions include only `MailboxSettings.Read`.
///
/// A message that fails is listed in the report and the restore goes on.
///
/// # Errors
/// The target user cannot be resolved, a folder cannot be created, or the repository fails.
pub async fn restore_mailbox(
    job: &AuthorizedJob,
    repo: &Repository,
    items: &[Item],
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let graph = job.graph();
    let target: DirectoryUser = graph
        .get_json(&format!(
            "/users/{}?$select=id,userPrincipalName,displayName,mail",
            encode_segment(&opts.target_user)
        ))
        .await
        .map_err(Error::graph(format!(
            "resolving target user {} (give --to-user as a user principal name or object id that exists in the tenant)",
            opts.target_user
        )))?;
    let tid = encode_segment(&target.id);
    let mut report = RestoreReport {
        target: target.user_principal_name.clone(),
        folder: opts.folder_name.clone(),
        ..RestoreReport::default()
    };

    // Mail.
    let folders: HashMap<&str, &Item> = items
        .iter()
        .filter(|i| i.kind == kind::MAIL_FOLDER)
        .map(|i| (i.id.as_str(), i))
        .collect();
    let messages: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind == kind::MESSAGE && selected(i, &opts.path_prefixes))
        .collect();
    if !messages.is_empty() {
        let root = create_folder(
            graph,
            &format!("/users/{tid}/mailFolders"),
            &opts.folder_name,
        )
        .await?;
        let mut created: HashMap<String, String> = HashMap::new();
        let mut targets: Vec<(&Item, String)> = Vec::with_capacity(messages.len());
        for m in messages {
            let fid = m.parent_id.clone().unwrap_or_default();
            let dest = ensure_folder(
                graph,
                &tid,
                &root,
                &fid,
                &folders,
                &mut created,
                &mut report,
            )
            .await?;
            targets.push((m, dest));
        }
        let results: Vec<(&Item, Result<u64>)> = futures::stream::iter(targets)
            .map(|(m, dest)| {
                let tid = &tid;
                async move {
                    let r = post_message(graph, repo, tid, &dest, m).await;
                    (m, r)
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        for (m, r) in results {
            match r {
                Ok(bytes) => {
                    report.messages += 1;
                    report.bytes += bytes;
                }
                Err(err) => {
                    tracing::warn!(path = %m.path, error = %err, "message not restored");
                    report.failed.push((m.path.clone(), err.to_string()));
                }
            }
        }
    }

    // Contacts.
    let contacts: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind == kind::CONTACT && selected(i, &opts.path_prefixes))
        .collect();
    if !contacts.is_empty() {
        let folder = create_folder(
            graph,
            &format!("/users/{tid}/contactFolders"),
            &opts.folder_name,
        )
        .await?;
        for c in contacts {
            let r: m365bk_graph::Result<Value> = graph
                .post_json(
                    &format!(
                        "/users/{tid}/contactFolders/{}/contacts",
                        encode_segment(&folder)
                    ),
                    &writable(c.metadata.clone()),
                )
                .await;
            match r {
                Ok(_) => report.contacts += 1,
                Err(err) => report.failed.push((c.path.clone(), err.to_string())),
            }
        }
    }

    // Events.
    let events: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind == kind::EVENT && selected(i, &opts.path_prefixes))
        .collect();
    if !events.is_empty() {
        let calendar: Value = graph
            .post_json(
                &format!("/users/{tid}/calendars"),
                &json!({ "name": opts.folder_name }),
            )
            .await
            .map_err(Error::graph(format!(
                "creating calendar {:?}",
                opts.folder_name
            )))?;
        let cid = calendar
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for e in events {
            let r: m365bk_graph::Result<Value> = graph
                .post_json(
                    &format!("/users/{tid}/calendars/{}/events", encode_segment(&cid)),
                    &writable(e.metadata.clone()),
                )
                .await;
            match r {
                Ok(_) => report.events += 1,
                Err(err) => report.failed.push((e.path.clone(), err.to_string())),
            }
        }
    }
    Ok(report)
}

/// The id of the restored copy of snapshot folder `fid`, creating it (and its ancestors)
/// below `root` on first use.
async fn ensure_folder(
    graph: &GraphClient,
    tid: &str,
    root: &str,
    fid: &str,
    folders: &HashMap<&str, &Item>,
    created: &mut HashMap<String, String>,
    report: &mut RestoreReport,
) -> Result<String> {
    // Walk up to the first ancestor already created (or the top), then create downwards.
    let mut chain: Vec<&Item> = Vec::new();
    let mut cur = folders.get(fid).copied();
    while let Some(f) = cur {
        if created.contains_key(&f.id) {
            break;
        }
        chain.push(f);
        cur = f.parent_id.as_deref().and_then(|p| folders.get(p).copied());
    }
    let mut parent = match cur {
        Some(f) => created[&f.id].clone(),
        None => root.to_string(),
    };
    for f in chain.into_iter().rev() {
        let name = f
            .metadata
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let id = create_folder(
            graph,
            &format!(
                "/users/{tid}/mailFolders/{}/childFolders",
                encode_segment(&parent)
            ),
            name,
        )
        .await?;
        report.folders += 1;
        created.insert(f.id.clone(), id.clone());
        parent = id;
    }
    Ok(parent)
}

async fn post_message(
    graph: &GraphClient,
    repo: &Repository,
    tid: &str,
    folder: &str,
    m: &Item,
) -> Result<u64> {
    let Some(content) = &m.content else {
        return Err(Error::Unexpected {
            what: m.path.clone(),
            detail: "the snapshot holds no MIME for this message".into(),
        });
    };
    let mime: Vec<u8> = repo
        .read_content(content)
        .map_ok(|b| b.to_vec())
        .try_concat()
        .await
        .map_err(Error::store(format!("reading {}", m.path)))?;
    graph
        .post_mime(
            &format!(
                "/users/{tid}/mailFolders/{}/messages",
                encode_segment(folder)
            ),
            &mime,
        )
        .await
        .map_err(Error::graph(format!("creating message {}", m.path)))?;
    Ok(mime.len() as u64)
}
