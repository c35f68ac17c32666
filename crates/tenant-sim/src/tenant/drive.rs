//! A OneDrive for Business drive: a tree of driveItems with a change sequence for delta.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::Content;
use crate::ids;

/// `@microsoft.graph.conflictBehavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConflictBehavior {
    Fail,
    Replace,
    Rename,
}

impl ConflictBehavior {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fail" => Some(Self::Fail),
            "replace" => Some(Self::Replace),
            "rename" => Some(Self::Rename),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ItemKind {
    Folder,
    File {
        content: Content,
        quick_xor: String,
        mime_type: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct DriveItem {
    pub id: String,
    pub name: String,
    /// `None` for the root.
    pub parent_id: Option<String>,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub seq: u64,
    /// Bumped on every change (eTag).
    pub etag_version: u64,
    /// Bumped on content changes only (cTag), as the driveItem resource documents.
    pub ctag_version: u64,
    pub kind: ItemKind,
}

impl DriveItem {
    pub(crate) fn is_folder(&self) -> bool {
        matches!(self.kind, ItemKind::Folder)
    }

    pub(crate) fn file_size(&self) -> u64 {
        match &self.kind {
            ItemKind::File { content, .. } => content.len(),
            ItemKind::Folder => 0,
        }
    }

    pub(crate) fn etag(&self) -> String {
        format!("\"{{{}}},{}\"", ids::tag_guid(&self.id), self.etag_version)
    }

    pub(crate) fn ctag(&self) -> String {
        format!(
            "\"c:{{{}}},{}\"",
            ids::tag_guid(&self.id),
            self.ctag_version
        )
    }
}

/// A removed item, reported by delta with the `deleted` facet.
#[derive(Debug, Clone)]
pub(crate) struct DriveTombstone {
    pub id: String,
    pub name: String,
    pub parent_id: String,
    pub is_folder: bool,
    pub seq: u64,
}

/// Why a drive write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DriveConflict {
    NameExists,
    ParentNotFound,
    ParentNotFolder,
    /// Replacing a folder with a file or the other way round.
    KindMismatch,
    InvalidName,
    RootImmutable,
}

#[derive(Debug)]
pub(crate) struct Drive {
    pub id: String,
    key: String,
    pub seq: u64,
    pub root_id: String,
    pub created: DateTime<Utc>,
    pub items: HashMap<String, DriveItem>,
    pub tombstones: Vec<DriveTombstone>,
}

/// OneDrive rejects these characters in names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.chars().any(|c| {
            matches!(c, '"' | '*' | ':' | '<' | '>' | '?' | '/' | '\\' | '|') || c.is_control()
        })
}

/// MIME type from the file extension, as OneDrive reports in `file.mimeType`.
pub(crate) fn mime_for(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "log" | "md") => "text/plain",
        Some("csv") => "text/csv",
        Some("htm" | "html") => "text/html",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/x-zip-compressed",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("eml") => "message/rfc822",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("pptx") => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        Some("doc") => "application/msword",
        Some("xls") => "application/vnd.ms-excel",
        Some("ppt") => "application/vnd.ms-powerpoint",
        Some("mp4") => "video/mp4",
        Some("mp3") => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

impl Drive {
    pub(crate) fn new(upn: &str, created: DateTime<Utc>) -> Self {
        let key = upn.to_ascii_lowercase();
        let id = ids::drive_id(&[&key, "drive"]);
        let root_id = ids::drive_item_id(&[&key, "item", ""]);
        let root = DriveItem {
            id: root_id.clone(),
            name: "root".into(),
            parent_id: None,
            created,
            modified: created,
            seq: 1,
            etag_version: 1,
            ctag_version: 1,
            kind: ItemKind::Folder,
        };
        let mut items = HashMap::new();
        items.insert(root_id.clone(), root);
        Drive {
            id,
            key,
            seq: 1,
            root_id,
            created,
            items,
            tombstones: Vec::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn item(&self, id: &str) -> Option<&DriveItem> {
        self.items.get(id)
    }

    pub(crate) fn children(&self, parent_id: &str) -> Vec<&DriveItem> {
        let mut v: Vec<&DriveItem> = self
            .items
            .values()
            .filter(|i| i.parent_id.as_deref() == Some(parent_id))
            .collect();
        v.sort_by_key(|i| i.name.to_lowercase());
        v
    }

    pub(crate) fn child_by_name(&self, parent_id: &str, name: &str) -> Option<&DriveItem> {
        self.items.values().find(|i| {
            i.parent_id.as_deref() == Some(parent_id) && i.name.eq_ignore_ascii_case(name)
        })
    }

    /// Resolves a `/`-separated path below `base_id`.
    pub(crate) fn resolve_path(&self, base_id: &str, path: &str) -> Option<String> {
        let mut cur = self.items.get(base_id)?.id.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = self.child_by_name(&cur, part)?.id.clone();
        }
        Some(cur)
    }

    /// Names from the root down to the item (the root itself is the empty list).
    pub(crate) fn path_names(&self, id: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut cur = self.items.get(id);
        while let Some(item) = cur {
            let Some(parent) = &item.parent_id else { break };
            names.push(item.name.clone());
            cur = self.items.get(parent);
        }
        names.reverse();
        names
    }

    /// Sort key that puts every folder before its descendants (depth-first, by name).
    pub(crate) fn path_key(&self, id: &str) -> String {
        self.path_names(id)
            .iter()
            .map(|n| n.to_lowercase())
            .collect::<Vec<_>>()
            .join("\u{1}")
    }

    pub(crate) fn child_count(&self, id: &str) -> usize {
        self.items
            .values()
            .filter(|i| i.parent_id.as_deref() == Some(id))
            .count()
    }

    /// Total file bytes below each folder.
    pub(crate) fn folder_sizes(&self) -> HashMap<String, u64> {
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for item in self.items.values() {
            let size = item.file_size();
            if size == 0 {
                continue;
            }
            let mut cur = item.parent_id.clone();
            while let Some(p) = cur {
                *sizes.entry(p.clone()).or_default() += size;
                cur = self.items.get(&p).and_then(|i| i.parent_id.clone());
            }
        }
        sizes
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.items.values().map(DriveItem::file_size).sum()
    }

    fn new_item_id(&self, parent_id: &str, name: &str) -> String {
        let mut path = self.path_names(parent_id);
        path.push(name.to_string());
        let path = path.join("/").to_lowercase();
        let mut id = ids::drive_item_id(&[&self.key, "item", &path]);
        let mut n = 0u64;
        while self.items.contains_key(&id) || self.tombstones.iter().any(|t| t.id == id) {
            n += 1;
            id = ids::drive_item_id(&[&self.key, "item", &path, &n.to_string()]);
        }
        id
    }

    /// `name 1.ext`, `name 2.ext`, … — the first name not taken in the folder.
    fn unique_name(&self, parent_id: &str, name: &str) -> String {
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
            _ => (name.to_string(), String::new()),
        };
        (1..)
            .map(|n| format!("{stem} {n}{ext}"))
            .find(|candidate| self.child_by_name(parent_id, candidate).is_none())
            .unwrap_or_else(|| name.to_string())
    }

    fn check_parent(&self, parent_id: &str, name: &str) -> Result<(), DriveConflict> {
        let parent = self
            .items
            .get(parent_id)
            .ok_or(DriveConflict::ParentNotFound)?;
        if !parent.is_folder() {
            return Err(DriveConflict::ParentNotFolder);
        }
        if !valid_name(name) {
            return Err(DriveConflict::InvalidName);
        }
        Ok(())
    }

    fn insert(
        &mut self,
        parent_id: &str,
        name: &str,
        kind: ItemKind,
        modified: DateTime<Utc>,
    ) -> String {
        let id = self.new_item_id(parent_id, name);
        let seq = self.next_seq();
        self.items.insert(
            id.clone(),
            DriveItem {
                id: id.clone(),
                name: name.to_string(),
                parent_id: Some(parent_id.to_string()),
                created: modified,
                modified,
                seq,
                etag_version: 1,
                ctag_version: 1,
                kind,
            },
        );
        id
    }

    /// Creates a folder. Returns the item id and whether it was newly created (`replace` on an
    /// existing folder returns that folder unchanged, as OneDrive does).
    pub(crate) fn create_folder(
        &mut self,
        parent_id: &str,
        name: &str,
        conflict: ConflictBehavior,
        modified: DateTime<Utc>,
    ) -> Result<(String, bool), DriveConflict> {
        self.check_parent(parent_id, name)?;
        let mut name = name.to_string();
        if let Some(existing) = self.child_by_name(parent_id, &name) {
            match conflict {
                ConflictBehavior::Fail => return Err(DriveConflict::NameExists),
                ConflictBehavior::Replace if existing.is_folder() => {
                    return Ok((existing.id.clone(), false))
                }
                ConflictBehavior::Replace => return Err(DriveConflict::KindMismatch),
                ConflictBehavior::Rename => name = self.unique_name(parent_id, &name),
            }
        }
        Ok((
            self.insert(parent_id, &name, ItemKind::Folder, modified),
            true,
        ))
    }

    /// Creates or replaces a file. Returns the item id and whether it was newly created.
    pub(crate) fn put_file(
        &mut self,
        parent_id: &str,
        name: &str,
        content: Content,
        quick_xor: String,
        conflict: ConflictBehavior,
        modified: DateTime<Utc>,
    ) -> Result<(String, bool), DriveConflict> {
        self.check_parent(parent_id, name)?;
        let mut name = name.to_string();
        if let Some(existing) = self.child_by_name(parent_id, &name) {
            match conflict {
                ConflictBehavior::Fail => return Err(DriveConflict::NameExists),
                ConflictBehavior::Replace if existing.is_folder() => {
                    return Err(DriveConflict::KindMismatch)
                }
                ConflictBehavior::Replace => {
                    let id = existing.id.clone();
                    self.replace_content(&id, content, quick_xor, modified);
                    return Ok((id, false));
                }
                ConflictBehavior::Rename => name = self.unique_name(parent_id, &name),
            }
        }
        let kind = ItemKind::File {
            content,
            quick_xor,
            mime_type: mime_for(&name).to_string(),
        };
        Ok((self.insert(parent_id, &name, kind, modified), true))
    }

    /// Replaces a file's content (new eTag and cTag). `false` when the item is not a file.
    pub(crate) fn replace_content(
        &mut self,
        id: &str,
        content: Content,
        quick_xor: String,
        modified: DateTime<Utc>,
    ) -> bool {
        let seq = self.next_seq();
        let Some(item) = self.items.get_mut(id) else {
            return false;
        };
        let ItemKind::File { mime_type, .. } = &item.kind else {
            return false;
        };
        item.kind = ItemKind::File {
            content,
            quick_xor,
            mime_type: mime_type.clone(),
        };
        item.seq = seq;
        item.etag_version += 1;
        item.ctag_version += 1;
        item.modified = modified;
        true
    }

    /// Renames and/or moves an item (new eTag; cTag unchanged).
    pub(crate) fn update(
        &mut self,
        id: &str,
        new_name: Option<&str>,
        new_parent: Option<&str>,
    ) -> Result<(), DriveConflict> {
        let item = self.items.get(id).ok_or(DriveConflict::ParentNotFound)?;
        let Some(old_parent) = item.parent_id.clone() else {
            return Err(DriveConflict::RootImmutable);
        };
        let name = new_name.unwrap_or(&item.name).to_string();
        let parent = new_parent.unwrap_or(&old_parent).to_string();
        self.check_parent(&parent, &name)?;
        // A folder cannot move below itself.
        let mut cur = Some(parent.clone());
        while let Some(p) = cur {
            if p == id {
                return Err(DriveConflict::ParentNotFolder);
            }
            cur = self.items.get(&p).and_then(|i| i.parent_id.clone());
        }
        if let Some(other) = self.child_by_name(&parent, &name) {
            if other.id != id {
                return Err(DriveConflict::NameExists);
            }
        }
        let seq = self.next_seq();
        if let Some(item) = self.items.get_mut(id) {
            item.name = name;
            item.parent_id = Some(parent);
            item.seq = seq;
            item.etag_version += 1;
            item.modified = Utc::now();
        }
        Ok(())
    }

    /// Deletes an item and everything below it; each gets a tombstone.
    pub(crate) fn delete(&mut self, id: &str) -> Result<(), DriveConflict> {
        let item = self.items.get(id).ok_or(DriveConflict::ParentNotFound)?;
        if item.parent_id.is_none() {
            return Err(DriveConflict::RootImmutable);
        }
        // Collect the subtree, deepest first, so children are reported before their folder.
        let mut order = vec![id.to_string()];
        let mut i = 0;
        while i < order.len() {
            let cur = order[i].clone();
            for c in self.children(&cur) {
                order.push(c.id.clone());
            }
            i += 1;
        }
        order.reverse();
        for victim in order {
            let seq = self.next_seq();
            if let Some(item) = self.items.remove(&victim) {
                self.tombstones.push(DriveTombstone {
                    id: item.id,
                    name: item.name,
                    parent_id: item.parent_id.unwrap_or_default(),
                    is_folder: matches!(item.kind, ItemKind::Folder),
                    seq,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(b: &'static [u8]) -> Content {
        Content::Memory(bytes::Bytes::from_static(b))
    }

    #[test]
    fn rename_conflict_picks_next_free_name() {
        let mut d = Drive::new("a@x", Utc::now());
        let root = d.root_id.clone();
        let now = Utc::now();
        d.put_file(
            &root,
            "a.txt",
            mem(b"1"),
            String::new(),
            ConflictBehavior::Fail,
            now,
        )
        .unwrap();
        assert_eq!(
            d.put_file(
                &root,
                "A.TXT",
                mem(b"2"),
                String::new(),
                ConflictBehavior::Fail,
                now
            ),
            Err(DriveConflict::NameExists)
        );
        let (id, created) = d
            .put_file(
                &root,
                "a.txt",
                mem(b"2"),
                String::new(),
                ConflictBehavior::Rename,
                now,
            )
            .unwrap();
        assert!(created);
        assert_eq!(d.item(&id).unwrap().name, "a 1.txt");
    }

    #[test]
    fn delete_leaves_tombstones_for_subtree() {
        let mut d = Drive::new("a@x", Utc::now());
        let root = d.root_id.clone();
        let now = Utc::now();
        let (f, _) = d
            .create_folder(&root, "F", ConflictBehavior::Fail, now)
            .unwrap();
        d.put_file(
            &f,
            "x",
            mem(b"1"),
            String::new(),
            ConflictBehavior::Fail,
            now,
        )
        .unwrap();
        d.delete(&f).unwrap();
        assert_eq!(d.tombstones.len(), 2);
        assert_eq!(d.tombstones[1].id, f);
        assert_eq!(d.items.len(), 1);
    }
}
