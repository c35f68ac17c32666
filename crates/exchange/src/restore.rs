//! Mailbox restore: messages from MIME into a new folder tree, contacts, events.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use m365bk_gate::{encode_segment, AuthorizedJob, DirectoryUser};
use m365bk_graph::{GraphClient, MAX_REQUEST_BODY, OUTLOOK_SESSION_MIN_BYTES};
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
/// a base64 MIME body, https://learn.microsoft.com/graph/api/user-post-messages). Graph takes
/// at most 4 MiB in one request, so a message whose base64 MIME is larger is created without
/// its file attachments of 3 MiB or more, which are then attached one by one through upload
/// sessions (https://learn.microsoft.com/graph/outlook-large-attachments; 4 MiB ranges,
/// resumed from `nextExpectedRanges`). Either way the message lands in the recreated folder
/// with the dates of its MIME headers and the flags Graph gives a MIME-created message; only
/// the large attachments' MIME encoding (headers, line length) is Microsoft's own. Contacts go
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
    let path = format!(
        "/users/{tid}/mailFolders/{}/messages",
        encode_segment(folder)
    );
    let len = mime.len() as u64;
    if base64_len(len) <= MAX_REQUEST_BODY {
        graph
            .post_mime(&path, &mime)
            .await
            .map_err(Error::graph(format!("creating message {}", m.path)))?;
        return Ok(len);
    }
    // Too large for one request: create it without its large attachments, then upload each
    // of them through an attachment upload session.
    let split = split_large_attachments(&mime).map_err(|detail| Error::Unexpected {
        what: m.path.clone(),
        detail,
    })?;
    drop(mime);
    let created: Value = graph
        .post_mime(&path, &split.rest)
        .await
        .map_err(Error::graph(format!(
            "creating message {} (without its {} large attachment(s))",
            m.path,
            split.large.len()
        )))?;
    let id = created
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Unexpected {
            what: format!("created message {}", m.path),
            detail: "no id in the response".into(),
        })?;
    let item_path = format!("/users/{tid}/messages/{}", encode_segment(id));
    for a in &split.large {
        let mut item = json!({
            "attachmentType": "file",
            "name": a.name,
            "size": a.data.len(),
            "contentType": a.content_type,
            "isInline": a.is_inline,
        });
        if let Some(cid) = &a.content_id {
            item["contentId"] = json!(cid);
        }
        let chunks: Vec<std::io::Result<bytes::Bytes>> = (0..a.data.len())
            .step_by(SOURCE_CHUNK)
            .map(|at| Ok(a.data.slice(at..(at + SOURCE_CHUNK).min(a.data.len()))))
            .collect();
        graph
            .attachment_upload_session(
                &item_path,
                &item,
                a.data.len() as u64,
                futures::stream::iter(chunks),
            )
            .await
            .map_err(Error::graph(format!(
                "attaching {:?} ({} bytes) to restored message {} (the message was created \
                 without it)",
                a.name,
                a.data.len(),
                m.path
            )))?;
    }
    Ok(len)
}

/// Size of the base64 encoding of `n` bytes.
fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Chunk size of the in-memory source handed to an upload session.
const SOURCE_CHUNK: usize = 1024 * 1024;

/// A file attachment taken out of a message's MIME, decoded.
#[derive(Debug)]
struct LargeAttachment {
    name: String,
    content_type: String,
    is_inline: bool,
    content_id: Option<String>,
    data: bytes::Bytes,
}

/// A message's MIME without its large attachments, and those attachments.
#[derive(Debug)]
struct Split {
    rest: Vec<u8>,
    large: Vec<LargeAttachment>,
}

/// Takes file attachments of at least [`OUTLOOK_SESSION_MIN_BYTES`] (decoded; largest first)
/// out of `mime` until the rest, base64-encoded, fits in one Graph request
/// ([`MAX_REQUEST_BODY`]). Each is cut together with its boundary delimiter line, so the rest
/// is valid MIME with every other part byte for byte. Attachments come back in MIME order.
///
/// # Errors
/// The MIME does not parse, or even without its large attachments it is too large (its body
/// or its small attachments exceed 3 MiB): the message cannot be restored through Graph.
fn split_large_attachments(mime: &[u8]) -> std::result::Result<Split, String> {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    let msg = MessageParser::default()
        .parse(mime)
        .ok_or("the stored MIME does not parse as a message")?;
    let mut parent: HashMap<u32, u32> = HashMap::new();
    for (i, p) in msg.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &p.body {
            for c in children {
                parent.insert(*c, i as u32);
            }
        }
    }
    // Candidates: (part id, decoded size, cut range).
    let mut candidates: Vec<(u32, usize, std::ops::Range<usize>)> = Vec::new();
    for &pid in &msg.attachments {
        let Some(part) = msg.part(pid) else { continue };
        if matches!(part.body, PartType::Message(_) | PartType::Multipart(_)) {
            continue;
        }
        let size = part.contents().len();
        if (size as u64) < OUTLOOK_SESSION_MIN_BYTES {
            continue;
        }
        let Some(boundary) = parent
            .get(&pid)
            .and_then(|p| msg.part(*p))
            .and_then(|p| p.content_type())
            .and_then(|ct| ct.attribute("boundary"))
        else {
            continue;
        };
        let delim = format!("\n--{boundary}");
        let header = part.raw_header_offset() as usize;
        let body = part.raw_body_offset() as usize;
        let (Some(before), Some(after)) = (
            rfind(&mime[..header], delim.as_bytes()),
            find(&mime[body..], delim.as_bytes()).map(|i| body + i),
        ) else {
            continue;
        };
        // Cut from the line break before our delimiter to the one before the next.
        let cr = |at: usize| {
            if at > 0 && mime[at - 1] == b'\r' {
                at - 1
            } else {
                at
            }
        };
        candidates.push((pid, size, cr(before)..cr(after)));
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
    let mut remaining = mime.len() as u64;
    let mut taken: Vec<(u32, std::ops::Range<usize>)> = Vec::new();
    for (pid, _, range) in candidates {
        if base64_len(remaining) <= MAX_REQUEST_BODY {
            break;
        }
        remaining -= range.len() as u64;
        taken.push((pid, range));
    }
    if base64_len(remaining) > MAX_REQUEST_BODY {
        return Err(format!(
            "the message is {} bytes and {} bytes remain without its attachments of 3 MiB or \
             more; Graph takes at most {MAX_REQUEST_BODY} bytes (base64) in one request, and \
             smaller attachments are not split off yet",
            mime.len(),
            remaining
        ));
    }
    taken.sort_by_key(|(_, r)| r.start);
    let mut rest = Vec::with_capacity(remaining as usize);
    let mut at = 0;
    let mut large = Vec::with_capacity(taken.len());
    for (pid, range) in taken {
        rest.extend_from_slice(&mime[at..range.start]);
        at = range.end;
        let part = msg.part(pid).expect("candidate part exists");
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_string(),
            })
            .unwrap_or_else(|| "application/octet-stream".into());
        large.push(LargeAttachment {
            name: part
                .attachment_name()
                .filter(|n| !n.is_empty())
                .unwrap_or("attachment")
                .to_string(),
            content_type,
            is_inline: part
                .content_disposition()
                .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline")),
            content_id: part
                .content_id()
                .map(|c| c.trim_matches(['<', '>']).to_string()),
            data: bytes::Bytes::copy_from_slice(part.contents()),
        });
    }
    rest.extend_from_slice(&mime[at..]);
    Ok(Split { rest, large })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(parts: &[(&str, usize)]) -> (Vec<u8>, Vec<Vec<u8>>) {
        use base64::Engine as _;
        let mut out = b"From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_B\"\r\n\r\nPreamble.\r\n--=_B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, body.\r\n".to_vec();
        let mut datas = Vec::new();
        for (i, (name, size)) in parts.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (j * 31 + i * 7) as u8).collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            out.extend_from_slice(
                format!("--=_B\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").as_bytes(),
            );
            for line in b64.as_bytes().chunks(76) {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            datas.push(data);
        }
        out.extend_from_slice(b"--=_B--\r\n");
        (out, datas)
    }

    #[test]
    fn splits_off_only_what_must_go_and_keeps_the_rest_byte_for_byte() {
        const MB: usize = 1024 * 1024;
        let (mime, datas) = message(&[
            ("small.bin", 1000),
            ("a.bin", 5 * MB),
            ("b.bin", 3 * MB + 7),
        ]);
        let split = split_large_attachments(&mime).unwrap();
        // 5 MiB alone leaves 3 MiB + ~1 KB raw = over 4 MiB base64, so both go.
        let names: Vec<&str> = split.large.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a.bin", "b.bin"]);
        assert_eq!(split.large[0].data, datas[1]);
        assert_eq!(split.large[1].data, datas[2]);
        assert_eq!(split.large[0].content_type, "application/octet-stream");
        assert!(!split.large[0].is_inline);
        let rest = mail_parser::MessageParser::default()
            .parse(&split.rest)
            .unwrap();
        assert_eq!(rest.subject(), Some("big"));
        assert_eq!(rest.body_text(0).unwrap().trim(), "Hello, body.");
        let left: Vec<_> = rest.attachments().map(|a| a.contents().to_vec()).collect();
        assert_eq!(left, vec![datas[0].clone()]);
        // Everything before the first cut is unchanged.
        let cut = find(&mime, b"a.bin").unwrap();
        assert_eq!(split.rest[..cut - 200], mime[..cut - 200]);
        assert!(split.rest.ends_with(b"--=_B--\r\n"));
    }

    #[test]
    fn takes_the_largest_first_and_stops_when_the_rest_fits() {
        const MB: usize = 1024 * 1024;
        let (mime, datas) = message(&[("c.bin", 2 * MB), ("d.bin", 6 * MB)]);
        let split = split_large_attachments(&mime).unwrap();
        assert_eq!(split.large.len(), 1);
        assert_eq!(split.large[0].name, "d.bin");
        assert_eq!(split.large[0].data, datas[1]);
        assert!(base64_len(split.rest.len() as u64) <= MAX_REQUEST_BODY);
    }

    #[test]
    fn a_message_too_large_without_large_attachments_is_refused_with_the_reason() {
        const MB: usize = 1024 * 1024;
        let (mime, _) = message(&[("e.bin", 2 * MB), ("f.bin", 2 * MB)]);
        let err = split_large_attachments(&mime).unwrap_err();
        assert!(
            err.contains("smaller attachments are not split off"),
            "{err}"
        );
    }
}
