//! The in-memory tenant: directory users, their mailboxes (mail, contacts, calendar) and
//! OneDrive drives, with the change sequence numbers that drive delta queries.
//!
//! Every mutation bumps the owning container's sequence number (`Mailbox::seq`, `Drive::seq`)
//! and stamps the changed item with it; removals leave tombstones carrying the sequence number
//! of the removal. A delta token is little more than such a number (see `delta.rs`).

mod drive;
mod mailbox;

use std::path::PathBuf;

use bytes::Bytes;
use chrono::{DateTime, Utc};

pub(crate) use drive::{
    ConflictBehavior, Drive, DriveConflict, DriveItem, DriveTombstone, ItemKind,
};
pub(crate) use mailbox::{
    Calendar, Contact, ContactFolder, Event, FolderConflict, MailFolder, Mailbox, Message,
    WELL_KNOWN_FOLDERS,
};

/// Where an item's bytes live: seeded content stays in the read-only corpus and is read on
/// demand; content written at run time is held in memory.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    Disk { path: PathBuf, len: u64 },
    Memory(Bytes),
}

impl Content {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Content::Disk { len, .. } => *len,
            Content::Memory(b) => b.len() as u64,
        }
    }

    /// Reads the whole content (blocking I/O for disk content).
    pub(crate) fn read_all_blocking(&self) -> std::io::Result<Bytes> {
        match self {
            Content::Disk { path, .. } => std::fs::read(path).map(Bytes::from),
            Content::Memory(b) => Ok(b.clone()),
        }
    }

    /// Reads the whole content off the async runtime.
    pub(crate) async fn read_all(&self) -> std::io::Result<Bytes> {
        match self {
            Content::Disk { path, .. } => tokio::fs::read(path).await.map(Bytes::from),
            Content::Memory(b) => Ok(b.clone()),
        }
    }
}

/// A registered application (service principal) and its current consent state.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub client_id: String,
    /// `None` for a certificate-only app registration.
    pub client_secret: Option<String>,
    /// Certificates registered under *Certificates & secrets* (client assertions).
    pub certificates: Vec<crate::token::KeyCredential>,
    pub display_name: String,
    pub admin_consent: bool,
    pub roles: Vec<String>,
}

/// The directory properties of a user.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserProfile {
    pub display_name: String,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub mail: String,
    pub job_title: Option<String>,
    pub office_location: Option<String>,
    pub preferred_language: String,
    pub mobile_phone: Option<String>,
}

/// A user with a mailbox and a OneDrive.
#[derive(Debug)]
pub(crate) struct User {
    pub id: String,
    pub upn: String,
    pub profile: UserProfile,
    pub mailbox: Mailbox,
    pub drive: Drive,
}

/// An open OneDrive upload session (`createUploadSession`).
#[derive(Debug)]
pub(crate) struct UploadSession {
    pub user_index: usize,
    pub parent_id: String,
    pub name: String,
    pub conflict: ConflictBehavior,
    pub data: Vec<u8>,
    pub total: Option<u64>,
    pub expires: DateTime<Utc>,
}

/// The whole simulated tenant.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub apps: Vec<App>,
    pub users: Vec<User>,
    pub uploads: std::collections::HashMap<String, UploadSession>,
    /// Open Outlook attachment upload sessions, by session id.
    pub attachment_uploads:
        std::collections::HashMap<String, crate::attachments::AttachmentSession>,
}

impl Tenant {
    pub(crate) fn app(&self, client_id: &str) -> Option<&App> {
        self.apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    pub(crate) fn app_mut(&mut self, client_id: &str) -> Option<&mut App> {
        self.apps
            .iter_mut()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    /// A user addressed by object id or user principal name (both case-insensitive).
    pub(crate) fn user_index(&self, key: &str) -> Option<usize> {
        self.users
            .iter()
            .position(|u| u.id.eq_ignore_ascii_case(key) || u.upn.eq_ignore_ascii_case(key))
    }

    pub(crate) fn drive_owner(&self, drive_id: &str) -> Option<usize> {
        self.users.iter().position(|u| u.drive.id == drive_id)
    }
}
