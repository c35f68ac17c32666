//! Seeding the tenant from a corpus directory:
//!
//! ```text
//! DIR/users/<upn>/user.json              optional directory properties
//! DIR/users/<upn>/mail/<Folder>/…/*.eml  mail folders and messages
//! DIR/users/<upn>/drive/<tree>           OneDrive files and folders
//! DIR/users/<upn>/calendar/**/*.ics      calendar events (optional)
//! ```
//!
//! The walk is sorted and ids are hashes of (UPN, path), so seeding is deterministic. File and
//! message bytes stay on disk and are read when requested.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::ics;
use crate::ids;
use crate::mime::{self, EmailAddress};
use crate::quickxor::QuickXorHash;
use crate::tenant::{
    App, ConflictBehavior, Content, Drive, Mailbox, Tenant, User, UserProfile, WELL_KNOWN_FOLDERS,
};

/// Time used where the corpus gives none, so seeding stays reproducible.
pub(crate) fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserJson {
    display_name: Option<String>,
    given_name: Option<String>,
    surname: Option<String>,
    mail: Option<String>,
    user_principal_name: Option<String>,
    job_title: Option<String>,
    office_location: Option<String>,
    preferred_language: Option<String>,
    mobile_phone: Option<String>,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::CorpusRead {
        path: path.to_owned(),
        source,
    }
}

/// Directory entries sorted by file name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(read_err(dir))? {
        v.push(e.map_err(read_err(dir))?.path());
    }
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mtime(meta: &fs::Metadata) -> DateTime<Utc> {
    meta.modified()
        .ok()
        .map(DateTime::<Utc>::from)
        .and_then(|t| DateTime::from_timestamp(t.timestamp(), 0))
        .unwrap_or_else(epoch)
}

/// Builds the tenant: apps from the config, users from the corpus.
///
/// # Errors
/// [`Error::CorpusRead`] for unreadable entries, [`Error::Corpus`] for a missing corpus
/// directory, a user directory whose name is not a UPN, or an unparsable `user.json`.
pub(crate) fn load(dir: &Path, config: &TenantConfig) -> Result<Tenant> {
    if !dir.is_dir() {
        return Err(Error::Corpus {
            path: dir.to_owned(),
            message: "corpus directory does not exist (expected DIR/users/<upn>/…)".into(),
        });
    }
    let apps = config
        .apps
        .iter()
        .map(|a| App {
            client_id: a.client_id.clone(),
            client_secret: a.client_secret.clone(),
            certificates: a
                .certificates
                .iter()
                .filter_map(|pem| crate::token::KeyCredential::from_pem(pem).ok())
                .collect(),
            display_name: a.display_name.clone().unwrap_or_else(|| "m365bk".into()),
            admin_consent: a.admin_consent,
            roles: a.roles.clone(),
        })
        .collect();
    let mut users = Vec::new();
    let users_dir = dir.join("users");
    if users_dir.is_dir() {
        for path in sorted_entries(&users_dir)? {
            if path.is_dir() {
                users.push(load_user(&path)?);
            }
        }
    } else {
        tracing::warn!(dir = %dir.display(), "corpus has no users/ directory: tenant has no users");
    }
    Ok(Tenant {
        apps,
        users,
        uploads: Default::default(),
        attachment_uploads: Default::default(),
    })
}

fn load_user(dir: &Path) -> Result<User> {
    let upn = file_name(dir);
    if !upn.contains('@') {
        return Err(Error::Corpus {
            path: dir.to_owned(),
            message: "user directory name must be a user principal name (name@domain)".into(),
        });
    }
    let json_path = dir.join("user.json");
    let uj: UserJson = if json_path.is_file() {
        let text = fs::read_to_string(&json_path).map_err(read_err(&json_path))?;
        serde_json::from_str(&text).map_err(|e| Error::Corpus {
            path: json_path.clone(),
            message: e.to_string(),
        })?
    } else {
        UserJson::default()
    };
    let upn = uj.user_principal_name.clone().unwrap_or(upn);
    let local = upn.split('@').next().unwrap_or(&upn).to_string();
    let profile = UserProfile {
        display_name: uj.display_name.clone().unwrap_or_else(|| local.clone()),
        given_name: uj.given_name.clone(),
        surname: uj.surname.clone(),
        mail: uj.mail.clone().unwrap_or_else(|| upn.clone()),
        job_title: uj.job_title.clone(),
        office_location: uj.office_location.clone(),
        preferred_language: uj
            .preferred_language
            .clone()
            .unwrap_or_else(|| "en-US".into()),
        mobile_phone: uj.mobile_phone.clone(),
    };
    let id = ids::guid(&["user", &upn.to_ascii_lowercase()]);
    let mut mailbox = Mailbox::new(&upn);
    let mail_dir = dir.join("mail");
    let mut correspondents: BTreeMap<String, EmailAddress> = BTreeMap::new();
    if mail_dir.is_dir() {
        seed_mail(&mut mailbox, &mail_dir, &mut correspondents)?;
    }
    seed_contacts(&mut mailbox, correspondents, &[&upn, &profile.mail]);
    let cal_dir = dir.join("calendar");
    if cal_dir.is_dir() {
        seed_calendar(&mut mailbox, &cal_dir, &cal_dir, &profile.mail)?;
    }
    let mut drive = Drive::new(&upn, epoch());
    let drive_dir = dir.join("drive");
    if drive_dir.is_dir() {
        let root = drive.root_id.clone();
        seed_drive(&mut drive, &drive_dir, &root)?;
    }
    Ok(User {
        id,
        upn,
        profile,
        mailbox,
        drive,
    })
}

fn seed_mail(
    mailbox: &mut Mailbox,
    mail_dir: &Path,
    correspondents: &mut BTreeMap<String, EmailAddress>,
) -> Result<()> {
    // Breadth of each level in sorted order; a folder is created before its messages.
    let mut stack: Vec<(PathBuf, String)> = Vec::new();
    for path in sorted_entries(mail_dir)?.into_iter().rev() {
        if path.is_dir() {
            let name = file_name(&path);
            let folder_id = match WELL_KNOWN_FOLDERS
                .iter()
                .find(|(_, display)| display.eq_ignore_ascii_case(&name))
            {
                Some((wk, _)) => mailbox.folder(wk).map(|f| f.id.clone()).unwrap_or_default(),
                None => mailbox.ensure_folder_path(&name),
            };
            stack.push((path, folder_id));
        } else {
            tracing::warn!(path = %path.display(), "ignoring file directly under mail/ (messages belong in a folder)");
        }
    }
    // Depth-first, sorted: process folders in order.
    let mut order = Vec::new();
    while let Some((dir, folder_id)) = stack.pop() {
        order.push((dir.clone(), folder_id.clone()));
        let mut subdirs = Vec::new();
        for path in sorted_entries(&dir)? {
            if path.is_dir() {
                let name = file_name(&path);
                let parent_path = mailbox.folder_path(&folder_id);
                let sub = mailbox.ensure_folder_path(&format!("{parent_path}/{name}"));
                subdirs.push((path, sub));
            }
        }
        for s in subdirs.into_iter().rev() {
            stack.push(s);
        }
    }
    for (dir, folder_id) in order {
        let folder_path = mailbox.folder_path(&folder_id).to_lowercase();
        let is_drafts = mailbox.folder("drafts").is_some_and(|f| f.id == folder_id);
        for path in sorted_entries(&dir)? {
            if !path.is_file() {
                continue;
            }
            let name = file_name(&path);
            if !name.to_ascii_lowercase().ends_with(".eml") {
                continue;
            }
            let bytes = fs::read(&path).map_err(read_err(&path))?;
            let Some(meta) = mime::parse(&bytes) else {
                tracing::warn!(path = %path.display(), "skipping message that is not MIME");
                continue;
            };
            for a in meta.from.iter().chain(meta.to.iter()) {
                correspondents
                    .entry(a.address.to_ascii_lowercase())
                    .or_insert_with(|| a.clone());
            }
            let id = ids::exchange_id("AAMkA", &[&mailbox.key, "message", &folder_path, &name]);
            let created = meta.sent.unwrap_or_else(epoch);
            mailbox.add_message(
                &folder_id,
                Some(id),
                Content::Disk {
                    path: path.clone(),
                    len: bytes.len() as u64,
                },
                meta,
                created,
                true,
                is_drafts,
            );
        }
    }
    Ok(())
}

/// Contact properties in Graph's shape for a person known by name and address.
pub(crate) fn contact_props(name: &str, address: &str) -> Map<String, Value> {
    let mut words = name.split_whitespace();
    let (given, surname) = if name.contains('@') {
        (None, None)
    } else {
        let g = words.next().map(str::to_string);
        let rest: Vec<&str> = words.collect();
        (g, (!rest.is_empty()).then(|| rest.join(" ")))
    };
    let initials: String = [given.as_deref(), surname.as_deref()]
        .iter()
        .flatten()
        .filter_map(|w| w.chars().next())
        .map(|c| format!("{c}."))
        .collect();
    let v = json!({
        "birthday": null,
        "fileAs": "",
        "displayName": name,
        "givenName": given,
        "initials": (!initials.is_empty()).then_some(initials),
        "middleName": null,
        "nickName": null,
        "surname": surname,
        "title": null,
        "yomiGivenName": null,
        "yomiSurname": null,
        "yomiCompanyName": null,
        "generation": null,
        "imAddresses": [],
        "jobTitle": null,
        "companyName": null,
        "department": null,
        "officeLocation": null,
        "profession": null,
        "businessHomePage": null,
        "assistantName": null,
        "manager": null,
        "homePhones": [],
        "mobilePhone": null,
        "businessPhones": [],
        "spouseName": null,
        "personalNotes": "",
        "children": [],
        "categories": [],
        "emailAddresses": [{"name": name, "address": address}],
        "homeAddress": {},
        "businessAddress": {},
        "otherAddress": {}
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn seed_contacts(
    mailbox: &mut Mailbox,
    correspondents: BTreeMap<String, EmailAddress>,
    own: &[&str],
) {
    let folder = mailbox.contacts_folder_id.clone();
    for (lower, a) in correspondents {
        if own.iter().any(|o| o.eq_ignore_ascii_case(&lower)) {
            continue;
        }
        let name = if a.name.eq_ignore_ascii_case(&a.address) {
            a.address
                .split('@')
                .next()
                .unwrap_or(&a.address)
                .to_string()
        } else {
            a.name.clone()
        };
        let id = ids::exchange_id("AAMkA", &[&mailbox.key, "contact", &lower]);
        mailbox.add_contact(&folder, Some(id), contact_props(&name, &a.address), epoch());
    }
}

/// Graph event properties (as event_get.json) for an event read from iCalendar.
pub(crate) fn event_props(e: &ics::IcsEvent, owner_mail: &str) -> Map<String, Value> {
    let addr = |a: &EmailAddress| json!({"emailAddress": {"name": a.name, "address": a.address}});
    let organizer =
        e.organizer.as_ref().map(addr).unwrap_or_else(
            || json!({"emailAddress": {"name": owner_mail, "address": owner_mail}}),
        );
    let is_organizer = e
        .organizer
        .as_ref()
        .is_none_or(|o| o.address.eq_ignore_ascii_case(owner_mail));
    let location = e.location.clone().unwrap_or_default();
    let v = json!({
        "reminderMinutesBeforeStart": 15,
        "isReminderOn": true,
        "hasAttachments": false,
        "subject": e.summary,
        "bodyPreview": e.description.chars().take(255).collect::<String>(),
        "importance": "normal",
        "sensitivity": "normal",
        "isAllDay": e.all_day,
        "isCancelled": false,
        "isOrganizer": is_organizer,
        "responseRequested": true,
        "seriesMasterId": null,
        "showAs": "busy",
        "type": "singleInstance",
        "iCalUId": e.uid,
        "originalStartTimeZone": e.time_zone,
        "originalEndTimeZone": e.time_zone,
        "isOnlineMeeting": false,
        "onlineMeetingProvider": "unknown",
        "allowNewTimeProposals": true,
        "hideAttendees": false,
        "categories": [],
        "responseStatus": {"response": if is_organizer { "organizer" } else { "none" }, "time": "0001-01-01T00:00:00Z"},
        "body": {"contentType": "text", "content": e.description},
        "location": {"displayName": location, "locationType": "default", "uniqueIdType": "unknown"},
        "locations": if location.is_empty() { json!([]) } else { json!([{"displayName": location, "locationType": "default", "uniqueIdType": "unknown"}]) },
        "recurrence": null,
        "attendees": e.attendees.iter().map(|a| json!({
            "type": "required",
            "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
            "emailAddress": {"name": a.name, "address": a.address}
        })).collect::<Vec<_>>(),
        "organizer": organizer,
        "onlineMeeting": null
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn seed_calendar(mailbox: &mut Mailbox, base: &Path, dir: &Path, owner_mail: &str) -> Result<()> {
    let calendar = mailbox.default_calendar_id();
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            seed_calendar(mailbox, base, &path, owner_mail)?;
            continue;
        }
        if !file_name(&path).to_ascii_lowercase().ends_with(".ics") {
            continue;
        }
        let bytes = fs::read(&path).map_err(read_err(&path))?;
        let text = String::from_utf8_lossy(&bytes);
        let rel = path
            .strip_prefix(base)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        for (i, e) in ics::parse(&text).iter().enumerate() {
            let key = format!("{rel}#{i}");
            let id = ids::exchange_id("AAMkA", &[&mailbox.key, "event", &key]);
            mailbox.add_event(
                &calendar,
                Some(id),
                event_props(e, owner_mail),
                e.start,
                e.end,
                epoch(),
            );
        }
    }
    Ok(())
}

/// QuickXorHash of a file, streamed.
pub(crate) fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(read_err(path))?;
    let mut h = QuickXorHash::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(read_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish_base64())
}

fn seed_drive(drive: &mut Drive, dir: &Path, parent_id: &str) -> Result<()> {
    for path in sorted_entries(dir)? {
        let name = file_name(&path);
        let meta = fs::metadata(&path).map_err(read_err(&path))?;
        let modified = mtime(&meta);
        if meta.is_dir() {
            match drive.create_folder(parent_id, &name, ConflictBehavior::Rename, modified) {
                Ok((id, _)) => seed_drive(drive, &path, &id)?,
                Err(e) => tracing::warn!(path = %path.display(), ?e, "skipping drive folder"),
            }
        } else if meta.is_file() {
            let hash = hash_file(&path)?;
            let content = Content::Disk {
                path: path.clone(),
                len: meta.len(),
            };
            if let Err(e) = drive.put_file(
                parent_id,
                &name,
                content,
                hash,
                ConflictBehavior::Rename,
                modified,
            ) {
                tracing::warn!(path = %path.display(), ?e, "skipping drive file");
            }
        }
    }
    Ok(())
}
