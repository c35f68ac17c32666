//! Drive restore: folders, then files (simple upload or upload session).

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use m365bk_gate::{encode_segment, AuthorizedJob};
use m365bk_graph::GraphClient;
use m365bk_store::{Item, Repository};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{kind, Error, Result};

/// Files up to this size go up in one `PUT …/content`; larger ones through an upload session
/// (Microsoft recommends sessions above 4 MiB:
/// https://learn.microsoft.com/graph/api/driveitem-put-content).
pub const SIMPLE_UPLOAD_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Target user (principal name or object id) whose drive receives the files.
    pub target_user: String,
    /// Name of the new folder at the drive root that receives everything.
    pub folder_name: String,
    /// Only items whose path starts with one of these; empty = all.
    pub path_prefixes: Vec<String>,
    /// Files uploaded at once.
    pub concurrency: usize,
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The target user.
    pub target: String,
    /// The folder everything went into.
    pub folder: String,
    /// Folders created (below the restore folder).
    pub folders: u64,
    /// Files uploaded.
    pub files: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Files that went through an upload session.
    pub upload_sessions: u64,
    /// Items that could not be restored: (path, reason).
    pub failed: Vec<(String, String)>,
}

fn selected(item: &Item, prefixes: &[String]) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| item.is_under(p))
}

async fn create_folder(
    graph: &GraphClient,
    did: &str,
    parent: &str,
    name: &str,
    behavior: &str,
) -> Result<String> {
    let created: Value = graph
        .post_json(
            &format!("/drives/{did}/items/{}/children", encode_segment(parent)),
            &json!({ "name": name, "folder": {}, "@microsoft.graph.conflictBehavior": behavior }),
        )
        .await
        .map_err(Error::graph(format!("creating folder {name:?}")))?;
    created
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::Unexpected {
            what: format!("created folder {name:?}"),
            detail: "no id".into(),
        })
}

/// Restores the `items` of one OneDrive snapshot into `opts.target_user`'s drive under a new
/// root folder `opts.folder_name` (renamed by OneDrive if it exists), recreating the folder
/// tree. Files up to [`SIMPLE_UPLOAD_MAX_BYTES`] are uploaded with
/// `PUT /drives/{id}/items/{parent-id}:/{name}:/content`, larger ones through
/// `createUploadSession` in 320 KiB-multiple fragments streamed from the repository.
///
/// A file that fails is listed in the report and the restore goes on.
///
/// # Errors
/// The target drive cannot be read, or a folder cannot be created.
pub async fn restore_drive(
    job: &AuthorizedJob,
    repo: &Repository,
    items: &[Item],
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let graph = job.graph();
    // `GET /users/{id}/drive` needs only Files.*: the recovery permission set has no
    // directory read, so the user is not looked up separately.
    let drive: Value = job
        .directory()
        .user_drive(&opts.target_user)
        .await
        .map_err(Error::graph(format!(
            "reading the drive of target user {}",
            opts.target_user
        )))?;
    let did = encode_segment(drive.get("id").and_then(Value::as_str).ok_or_else(|| {
        Error::Unexpected {
            what: "target drive".into(),
            detail: "no id".into(),
        }
    })?);
    let root = create_folder(graph, &did, "root", &opts.folder_name, "rename").await?;
    let mut report = RestoreReport {
        target: opts.target_user.clone(),
        folder: opts.folder_name.clone(),
        ..RestoreReport::default()
    };

    let mut folders: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind == kind::FOLDER && selected(i, &opts.path_prefixes))
        .collect();
    folders.sort_by_key(|f| f.path.matches('/').count());
    let files: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind == kind::FILE && selected(i, &opts.path_prefixes))
        .collect();

    // path → created folder id; "" is the restore root.
    let mut created: HashMap<String, String> = HashMap::new();
    created.insert(String::new(), root);
    for f in &folders {
        ensure_dir(graph, &did, &f.path, &mut created, &mut report).await?;
    }
    let mut targets = Vec::with_capacity(files.len());
    for f in files {
        let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let parent = ensure_dir(graph, &did, dir, &mut created, &mut report).await?;
        targets.push((f, parent));
    }
    let results: Vec<(&Item, Result<bool>)> = futures::stream::iter(targets)
        .map(|(f, parent)| {
            let did = did.clone();
            async move {
                let r = upload(graph, repo, &did, &parent, f).await;
                (f, r)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    for (f, r) in results {
        match r {
            Ok(session) => {
                report.files += 1;
                report.bytes += f.size;
                report.upload_sessions += u64::from(session);
            }
            Err(err) => {
                tracing::warn!(path = %f.path, error = %err, "file not restored");
                report.failed.push((f.path.clone(), err.to_string()));
            }
        }
    }
    Ok(report)
}

/// The id of restored directory `path` (relative to the restore root), creating it and its
/// ancestors on first use.
async fn ensure_dir(
    graph: &GraphClient,
    did: &str,
    path: &str,
    created: &mut HashMap<String, String>,
    report: &mut RestoreReport,
) -> Result<String> {
    if let Some(id) = created.get(path) {
        return Ok(id.clone());
    }
    let (parent_path, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = Box::pin(ensure_dir(graph, did, parent_path, created, report)).await?;
    let id = create_folder(graph, did, &parent, &name.replace('\u{2215}', "/"), "fail").await?;
    report.folders += 1;
    created.insert(path.to_string(), id.clone());
    Ok(id)
}

/// Uploads one file; returns whether an upload session was used.
async fn upload(
    graph: &GraphClient,
    repo: &Repository,
    did: &str,
    parent: &str,
    f: &Item,
) -> Result<bool> {
    let name = f
        .path
        .rsplit('/')
        .next()
        .unwrap_or(&f.path)
        .replace('\u{2215}', "/");
    let addr = format!(
        "/drives/{did}/items/{}:/{}:",
        encode_segment(parent),
        encode_segment(&name)
    );
    let content = f.content.clone().unwrap_or(m365bk_store::ContentRef {
        size: 0,
        blobs: Vec::new(),
    });
    let mime = f
        .metadata
        .get("file")
        .and_then(|x| x.get("mimeType"))
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream")
        .to_string();
    if content.size <= SIMPLE_UPLOAD_MAX_BYTES {
        let bytes: Vec<u8> = repo
            .read_content(&content)
            .map_ok(|b| b.to_vec())
            .try_concat()
            .await
            .map_err(Error::store(format!("reading {}", f.path)))?;
        if bytes.len() as u64 != content.size {
            return Err(Error::SizeMismatch {
                path: f.path.clone(),
                expected: content.size,
                actual: bytes.len() as u64,
            });
        }
        graph
            .put_bytes(&format!("{addr}/content"), bytes.into(), &mime)
            .await
            .map_err(Error::graph(format!("uploading {}", f.path)))?;
        return Ok(false);
    }
    let source = repo.read_content(&content).map_err(std::io::Error::other);
    graph
        .upload_session(
            &format!("{addr}/createUploadSession"),
            &json!({ "item": { "@microsoft.graph.conflictBehavior": "fail", "name": name } }),
            content.size,
            Box::pin(source),
        )
        .await
        .map_err(Error::graph(format!(
            "uploading {} through an upload session",
            f.path
        )))?;
    Ok(true)
}
