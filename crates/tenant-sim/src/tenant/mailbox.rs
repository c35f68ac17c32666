//! An Exchange mailbox: mail folders and messages, contact folders and contacts, calendars and
//! events, all sharing one change sequence.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::Content;
use crate::ids;
use crate::mime::MessageMeta;

/// Outlook's well-known mail folders: (well-known name, display name). Every mailbox has them.
pub(crate) const WELL_KNOWN_FOLDERS: &[(&str, &str)] = &[
    ("archive", "Archive"),
    ("conversationhistory", "Conversation History"),
    ("deleteditems", "Deleted Items"),
    ("drafts", "Drafts"),
    ("inbox", "Inbox"),
    ("junkemail", "Junk Email"),
    ("outbox", "Outbox"),
    ("sentitems", "Sent Items"),
];

#[derive(Debug, Clone)]
pub(crate) struct MailFolder {
    pub id: String,
    pub display_name: String,
    /// Empty for the root (`msgfolderroot`).
    pub parent_id: String,
    pub well_known: Option<&'static str>,
    pub is_hidden: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub id: String,
    pub folder_id: String,
    pub seq: u64,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub meta: MessageMeta,
    pub mime: Content,
    pub is_read: bool,
    pub is_draft: bool,
}

/// An item removed from a container (deleted, or moved out of a folder) at `seq`.
#[derive(Debug, Clone)]
pub(crate) struct Tombstone {
    pub id: String,
    pub container_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct ContactFolder {
    pub id: String,
    pub display_name: String,
    pub parent_id: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: String,
    pub folder_id: String,
    pub seq: u64,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    /// Graph contact properties other than the ones the simulator owns (ids, times, keys).
    pub props: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct Calendar {
    pub id: String,
    pub name: String,
    pub is_default: bool,
    pub version: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub id: String,
    pub calendar_id: String,
    pub seq: u64,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Graph event properties other than the ones the simulator owns.
    pub props: Map<String, Value>,
}

/// Why a folder could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FolderConflict {
    Exists,
    ParentNotFound,
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Id namespace: the owner's UPN in lower case.
    pub key: String,
    pub seq: u64,
    pub root_id: String,
    pub folders: Vec<MailFolder>,
    pub messages: BTreeMap<String, Message>,
    pub mail_tombstones: Vec<Tombstone>,
    pub contacts_folder_id: String,
    pub contact_folders: Vec<ContactFolder>,
    pub contacts: BTreeMap<String, Contact>,
    pub contact_tombstones: Vec<Tombstone>,
    pub calendars: Vec<Calendar>,
    pub events: BTreeMap<String, Event>,
    pub event_tombstones: Vec<Tombstone>,
}

fn folder_id(key: &str, path_lower: &str) -> String {
    ids::exchange_id("AQMkA", &[key, "mailfolder", path_lower])
}

impl Mailbox {
    /// A mailbox with the root, Outlook's well-known folders, the default Contacts folder and
    /// the default Calendar.
    pub(crate) fn new(upn: &str) -> Self {
        let key = upn.to_ascii_lowercase();
        let root_id = folder_id(&key, "");
        let mut folders = vec![MailFolder {
            id: root_id.clone(),
            display_name: "Top of Information Store".into(),
            parent_id: String::new(),
            well_known: Some("msgfolderroot"),
            is_hidden: false,
        }];
        for (wk, name) in WELL_KNOWN_FOLDERS {
            folders.push(MailFolder {
                id: folder_id(&key, &name.to_ascii_lowercase()),
                display_name: (*name).into(),
                parent_id: root_id.clone(),
                well_known: Some(wk),
                is_hidden: false,
            });
        }
        let contacts_folder_id = ids::exchange_id("AAMkA", &[&key, "contactfolder", "contacts"]);
        let contact_folders = vec![ContactFolder {
            id: contacts_folder_id.clone(),
            display_name: "Contacts".into(),
            parent_id: root_id.clone(),
        }];
        let calendars = vec![Calendar {
            id: ids::exchange_id("AAMkA", &[&key, "calendar", "calendar"]),
            name: "Calendar".into(),
            is_default: true,
            version: 1,
        }];
        Mailbox {
            key,
            seq: 0,
            root_id,
            folders,
            messages: BTreeMap::new(),
            mail_tombstones: Vec::new(),
            contacts_folder_id,
            contact_folders,
            contacts: BTreeMap::new(),
            contact_tombstones: Vec::new(),
            calendars,
            events: BTreeMap::new(),
            event_tombstones: Vec::new(),
        }
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    // ---- mail folders ----

    /// A folder by id or well-known name (`inbox`, `msgfolderroot`, …; case-insensitive).
    pub(crate) fn folder(&self, key: &str) -> Option<&MailFolder> {
        self.folders.iter().find(|f| f.id == key).or_else(|| {
            self.folders
                .iter()
                .find(|f| f.well_known.is_some_and(|wk| wk.eq_ignore_ascii_case(key)))
        })
    }

    pub(crate) fn child_folders(&self, parent_id: &str) -> Vec<&MailFolder> {
        let mut v: Vec<&MailFolder> = self
            .folders
            .iter()
            .filter(|f| f.parent_id == parent_id)
            .collect();
        v.sort_by_key(|f| f.display_name.to_lowercase());
        v
    }

    /// (totalItemCount, unreadItemCount).
    pub(crate) fn folder_counts(&self, folder_id: &str) -> (u64, u64) {
        let mut total = 0;
        let mut unread = 0;
        for m in self.messages.values().filter(|m| m.folder_id == folder_id) {
            total += 1;
            if !m.is_read {
                unread += 1;
            }
        }
        (total, unread)
    }

    /// Display-name path below the root, `/`-separated (`Inbox/Projects`).
    pub(crate) fn folder_path(&self, id: &str) -> String {
        let mut parts = Vec::new();
        let mut cur = self.folders.iter().find(|f| f.id == id);
        while let Some(f) = cur {
            if f.id == self.root_id {
                break;
            }
            parts.push(f.display_name.clone());
            cur = self.folders.iter().find(|p| p.id == f.parent_id);
        }
        parts.reverse();
        parts.join("/")
    }

    pub(crate) fn create_folder(
        &mut self,
        parent_id: &str,
        name: &str,
    ) -> Result<String, FolderConflict> {
        if !self.folders.iter().any(|f| f.id == parent_id) {
            return Err(FolderConflict::ParentNotFound);
        }
        if self
            .folders
            .iter()
            .any(|f| f.parent_id == parent_id && f.display_name.eq_ignore_ascii_case(name))
        {
            return Err(FolderConflict::Exists);
        }
        let parent_path = self.folder_path(parent_id);
        let path = if parent_path.is_empty() {
            name.to_string()
        } else {
            format!("{parent_path}/{name}")
        };
        let mut id = folder_id(&self.key, &path.to_lowercase());
        if self.folders.iter().any(|f| f.id == id) {
            // A folder at this path existed before and was renamed/moved; keep ids unique.
            let seq = self.next_seq().to_string();
            id = ids::exchange_id("AQMkA", &[&self.key, "mailfolder", &path, &seq]);
        }
        self.folders.push(MailFolder {
            id: id.clone(),
            display_name: name.to_string(),
            parent_id: parent_id.to_string(),
            well_known: None,
            is_hidden: false,
        });
        Ok(id)
    }

    /// The folder at a display-name path (`Inbox/Sub`), created as needed. The first component
    /// matches existing top-level folders (including the well-known ones) case-insensitively.
    pub(crate) fn ensure_folder_path(&mut self, path: &str) -> String {
        let mut cur = self.root_id.clone();
        for part in path.split('/').map(str::trim).filter(|p| !p.is_empty()) {
            let existing = self
                .folders
                .iter()
                .find(|f| f.parent_id == cur && f.display_name.eq_ignore_ascii_case(part))
                .map(|f| f.id.clone());
            cur = match existing {
                Some(id) => id,
                None => match self.create_folder(&cur, part) {
                    Ok(id) => id,
                    // Cannot happen: the parent exists and no sibling has the name.
                    Err(_) => return cur,
                },
            };
        }
        cur
    }

    // ---- messages ----

    /// Adds a message; `id` is given for seeded messages (derived from the corpus path).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_message(
        &mut self,
        folder_id: &str,
        id: Option<String>,
        mime: Content,
        meta: MessageMeta,
        created: DateTime<Utc>,
        is_read: bool,
        is_draft: bool,
    ) -> String {
        let seq = self.next_seq();
        let id = id.unwrap_or_else(|| {
            ids::exchange_id("AAMkA", &[&self.key, "message", &seq.to_string()])
        });
        let received = meta.sent.unwrap_or(created);
        self.messages.insert(
            id.clone(),
            Message {
                id: id.clone(),
                folder_id: folder_id.to_string(),
                seq,
                version: 1,
                created,
                modified: created,
                received,
                meta,
                mime,
                is_read,
                is_draft,
            },
        );
        id
    }

    /// Moves a message; like Exchange, the moved message gets a new id. Returns the new id.
    pub(crate) fn move_message(&mut self, id: &str, dest_folder_id: &str) -> Option<String> {
        let mut msg = self.messages.remove(id)?;
        let seq = self.next_seq();
        self.mail_tombstones.push(Tombstone {
            id: msg.id.clone(),
            container_id: msg.folder_id.clone(),
            seq,
        });
        let new_id = ids::exchange_id("AAMkA", &[&self.key, "moved", id, &seq.to_string()]);
        msg.id = new_id.clone();
        msg.folder_id = dest_folder_id.to_string();
        msg.seq = seq;
        msg.version += 1;
        msg.modified = Utc::now();
        self.messages.insert(new_id.clone(), msg);
        Some(new_id)
    }

    pub(crate) fn delete_message(&mut self, id: &str) -> bool {
        let Some(msg) = self.messages.remove(id) else {
            return false;
        };
        let seq = self.next_seq();
        self.mail_tombstones.push(Tombstone {
            id: msg.id,
            container_id: msg.folder_id,
            seq,
        });
        true
    }

    // ---- contacts ----

    pub(crate) fn contact_folder(&self, id: &str) -> Option<&ContactFolder> {
        self.contact_folders.iter().find(|f| f.id == id)
    }

    pub(crate) fn create_contact_folder(
        &mut self,
        parent_id: &str,
        name: &str,
    ) -> Result<String, FolderConflict> {
        if self.contact_folder(parent_id).is_none() {
            return Err(FolderConflict::ParentNotFound);
        }
        if self
            .contact_folders
            .iter()
            .any(|f| f.parent_id == parent_id && f.display_name.eq_ignore_ascii_case(name))
        {
            return Err(FolderConflict::Exists);
        }
        let seq = self.next_seq().to_string();
        let id = ids::exchange_id("AAMkA", &[&self.key, "contactfolder", name, &seq]);
        self.contact_folders.push(ContactFolder {
            id: id.clone(),
            display_name: name.to_string(),
            parent_id: parent_id.to_string(),
        });
        Ok(id)
    }

    pub(crate) fn add_contact(
        &mut self,
        folder_id: &str,
        id: Option<String>,
        props: Map<String, Value>,
        created: DateTime<Utc>,
    ) -> String {
        let seq = self.next_seq();
        let id = id.unwrap_or_else(|| {
            ids::exchange_id("AAMkA", &[&self.key, "contact", &seq.to_string()])
        });
        self.contacts.insert(
            id.clone(),
            Contact {
                id: id.clone(),
                folder_id: folder_id.to_string(),
                seq,
                version: 1,
                created,
                modified: created,
                props,
            },
        );
        id
    }

    // ---- calendars ----

    pub(crate) fn calendar(&self, id: &str) -> Option<&Calendar> {
        self.calendars.iter().find(|c| c.id == id)
    }

    pub(crate) fn default_calendar_id(&self) -> String {
        self.calendars
            .iter()
            .find(|c| c.is_default)
            .map(|c| c.id.clone())
            .unwrap_or_default()
    }

    pub(crate) fn create_calendar(&mut self, name: &str) -> Result<String, FolderConflict> {
        if self
            .calendars
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(name))
        {
            return Err(FolderConflict::Exists);
        }
        let seq = self.next_seq().to_string();
        let id = ids::exchange_id("AAMkA", &[&self.key, "calendar", name, &seq]);
        self.calendars.push(Calendar {
            id: id.clone(),
            name: name.to_string(),
            is_default: false,
            version: 1,
        });
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_event(
        &mut self,
        calendar_id: &str,
        id: Option<String>,
        props: Map<String, Value>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        created: DateTime<Utc>,
    ) -> String {
        let seq = self.next_seq();
        let id = id
            .unwrap_or_else(|| ids::exchange_id("AAMkA", &[&self.key, "event", &seq.to_string()]));
        self.events.insert(
            id.clone(),
            Event {
                id: id.clone(),
                calendar_id: calendar_id.to_string(),
                seq,
                version: 1,
                created,
                modified: created,
                start,
                end,
                props,
            },
        );
        id
    }
}
