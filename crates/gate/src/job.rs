//! The job model every worker shares: what to do, to which resources.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Microsoft 365 workload m365bk protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Exchange Online user mailboxes: mail, calendars, contacts, mailbox settings, OneNote.
    Exchange,
    /// Microsoft 365 group mailboxes.
    GroupMailbox,
    /// OneDrive for Business.
    #[serde(rename = "onedrive")]
    OneDrive,
    /// SharePoint Online sites.
    #[serde(rename = "sharepoint")]
    SharePoint,
    /// Microsoft Teams.
    Teams,
}

impl Service {
    /// The name used in the matrix, the CLI and snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Exchange => "exchange",
            Service::GroupMailbox => "group_mailbox",
            Service::OneDrive => "onedrive",
            Service::SharePoint => "sharepoint",
            Service::Teams => "teams",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "exchange" => Service::Exchange,
            "group_mailbox" | "group-mailbox" => Service::GroupMailbox,
            "onedrive" => Service::OneDrive,
            "sharepoint" => Service::SharePoint,
            "teams" => Service::Teams,
            other => {
                return Err(format!(
                "unknown service {other:?}: expected exchange, group_mailbox, onedrive, sharepoint or teams"
            ))
            }
        })
    }
}

/// What a job does with its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Enumerate the resources (users, groups, sites, teams) that can be protected.
    Discovery,
    /// Read resources into the repository. Includes discovery of the selected resources.
    Backup,
    /// Write items from the repository back to Microsoft 365.
    Recovery,
}

impl Operation {
    /// The name used in the matrix and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Discovery => "discovery",
            Operation::Backup => "backup",
            Operation::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "discovery" => Operation::Discovery,
            "backup" => Operation::Backup,
            "recovery" | "restore" => Operation::Recovery,
            other => {
                return Err(format!(
                    "unknown operation {other:?}: expected discovery, backup or recovery"
                ))
            }
        })
    }
}

/// Item types of an Exchange mailbox. Each maps to the permissions of its Graph area, so a job
/// that selects fewer item types needs fewer permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemType {
    /// `message`s in `mailFolder`s (Mail.*).
    Mail,
    /// `event`s in `calendar`s (Calendars.*).
    Calendar,
    /// `contact`s in `contactFolder`s (Contacts.*).
    Contacts,
    /// `mailboxSettings` (MailboxSettings.*).
    MailboxSettings,
    /// OneNote notebooks (Notes.*).
    #[serde(rename = "onenote")]
    OneNote,
}

impl ItemType {
    /// Every Exchange item type, the default selection.
    pub const ALL: [ItemType; 5] = [
        ItemType::Mail,
        ItemType::Calendar,
        ItemType::Contacts,
        ItemType::MailboxSettings,
        ItemType::OneNote,
    ];

    /// The CLI / snapshot name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Mail => "mail",
            ItemType::Calendar => "calendar",
            ItemType::Contacts => "contacts",
            ItemType::MailboxSettings => "mailbox_settings",
            ItemType::OneNote => "onenote",
        }
    }

    /// The item type a Graph permission's area belongs to, or `None` for permissions every
    /// item type needs (directory reads such as `User.Read.All`).
    pub fn of_permission(permission: &str) -> Option<ItemType> {
        let area = permission.split('.').next().unwrap_or_default();
        match area {
            "Mail" => Some(ItemType::Mail),
            "Calendars" => Some(ItemType::Calendar),
            "Contacts" => Some(ItemType::Contacts),
            "MailboxSettings" => Some(ItemType::MailboxSettings),
            "Notes" => Some(ItemType::OneNote),
            _ => None,
        }
    }
}

impl fmt::Display for ItemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ItemType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemType::ALL
            .into_iter()
            .find(|t| t.as_str() == s || (s == "mailbox-settings" && *t == ItemType::MailboxSettings))
            .ok_or_else(|| {
                format!("unknown item type {s:?}: expected mail, calendar, contacts, mailbox_settings or onenote")
            })
    }
}

/// Which resources a job covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserSelection {
    /// Every user the directory lists.
    All,
    /// These users, by user principal name or object id.
    Users(Vec<String>),
}

/// A job's selection: resources and item types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Users (mailboxes, OneDrives).
    pub users: UserSelection,
    /// Exchange item types; ignored by other services.
    pub item_types: BTreeSet<ItemType>,
}

impl Selection {
    /// Every item type of the given users.
    pub fn users(users: UserSelection) -> Selection {
        Selection {
            users,
            item_types: ItemType::ALL.into_iter().collect(),
        }
    }
}

/// A unique job id (UUID v4 text), in logs, the catalog and snapshots.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub String);

impl JobId {
    /// A fresh random id.
    pub fn new() -> JobId {
        JobId(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything the gate needs to decide whether a job may run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique id of this run.
    pub id: JobId,
    /// The workload.
    pub service: Service,
    /// What is done to it.
    pub operation: Operation,
    /// Which resources and item types.
    pub selection: Selection,
    /// Active job variants that add conditional requirements (the matrix's `condition`
    /// column, e.g. `item_attachment`, `certificate_auth`).
    pub conditions: BTreeSet<String>,
}

impl JobSpec {
    /// A job with a fresh id, every item type and no conditional variant.
    pub fn new(service: Service, operation: Operation, users: UserSelection) -> JobSpec {
        JobSpec {
            id: JobId::new(),
            service,
            operation,
            selection: Selection::users(users),
            conditions: BTreeSet::new(),
        }
    }
}
