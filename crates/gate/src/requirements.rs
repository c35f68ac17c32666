//! `JobSpec` → the exact set of permissions the job needs.

use serde::Serialize;

use crate::job::{ItemType, JobSpec, Operation, Service};
use crate::matrix::{Api, PermissionMatrix, PermissionType};

/// One permission a job needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// Permission name, e.g. `Mail.Read`.
    pub permission: String,
    /// The API that defines it (and the token audience that must carry it).
    pub api: Api,
    /// Application (`roles`) or delegated (`scp`).
    pub kind: PermissionType,
    /// Entra ID's app-role id for it, when known.
    pub app_role_id: Option<String>,
    /// The job variant that made it necessary, if it is conditional.
    pub condition: Option<String>,
    /// What Microsoft changed that this requirement depends on (DESIGN §7), if anything.
    pub caveat: Option<&'static str>,
}

/// The operations whose matrix rows a job of `operation` needs: a backup discovers the
/// resources it reads (it lists or resolves users), so it needs discovery's rows too.
pub fn operations_for(operation: Operation) -> &'static [Operation] {
    match operation {
        Operation::Discovery => &[Operation::Discovery],
        Operation::Backup => &[Operation::Discovery, Operation::Backup],
        Operation::Recovery => &[Operation::Recovery],
    }
}

/// Microsoft changes a permission's path depends on (DESIGN §7).
fn caveat_for(permission: &str, api: Api) -> Option<&'static str> {
    if permission.starts_with("Notes.") {
        return Some(
            "the OneNote API has refused app-only tokens since 2025-03-31; m365bk backs notebooks up as files in OneDrive/SharePoint instead",
        );
    }
    if permission == "full_access_as_app" && api == Api::ExchangeOnline {
        return Some(
            "Exchange Web Services is blocked in Exchange Online from 2026-10-01 unless the tenant allow-lists the app (EWSEnabled, EWSAllowedAppIDs) and is removed on 2027-04-01",
        );
    }
    None
}

/// The exact permissions `spec` needs, from the compiled matrix, without duplicates, in
/// matrix order.
///
/// A row applies when its service is the job's, one of its operations is among
/// [`operations_for`] the job's operation, its condition (if any) is active in the job, and —
/// for mailbox services — its Graph area belongs to a selected [`ItemType`].
pub fn required_permissions(spec: &JobSpec) -> Vec<Requirement> {
    let matrix = PermissionMatrix::builtin();
    let ops = operations_for(spec.operation);
    let mut out: Vec<Requirement> = Vec::new();
    for row in matrix.rows() {
        if row.service != spec.service || !row.operations.iter().any(|o| ops.contains(o)) {
            continue;
        }
        let condition = if row.conditions.is_empty() {
            None
        } else {
            match row.conditions.iter().find(|c| spec.conditions.contains(*c)) {
                Some(c) => Some(c.clone()),
                None => continue,
            }
        };
        if matches!(spec.service, Service::Exchange) && row.api == Api::Graph {
            if let Some(item_type) = ItemType::of_permission(&row.permission) {
                if !spec.selection.item_types.contains(&item_type) {
                    continue;
                }
            }
        }
        if out
            .iter()
            .any(|r| r.permission == row.permission && r.api == row.api && r.kind == row.kind)
        {
            continue;
        }
        out.push(Requirement {
            permission: row.permission.clone(),
            api: row.api,
            kind: row.kind,
            app_role_id: matrix
                .app_role_id(row.api, &row.permission)
                .map(str::to_string),
            condition,
            caveat: caveat_for(&row.permission, row.api),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::UserSelection;

    fn names(spec: &JobSpec) -> Vec<String> {
        required_permissions(spec)
            .into_iter()
            .map(|r| format!("{}:{}", r.api.resource_app_id(), r.permission))
            .map(|s| s.split(':').nth(1).unwrap().to_string())
            .collect()
    }

    #[test]
    fn exchange_backup_needs_discovery_and_backup_rows_of_every_item_type() {
        let spec = JobSpec::new(Service::Exchange, Operation::Backup, UserSelection::All);
        assert_eq!(
            names(&spec),
            [
                "Calendars.Read",
                "Notes.Read.All",
                "Mail.Read",
                "MailboxSettings.Read",
                "User.Read.All",
                "Contacts.Read"
            ]
        );
    }

    #[test]
    fn exchange_mail_only_backup_needs_only_mail_and_directory() {
        let mut spec = JobSpec::new(Service::Exchange, Operation::Backup, UserSelection::All);
        spec.selection.item_types = [ItemType::Mail].into_iter().collect();
        assert_eq!(names(&spec), ["Mail.Read", "User.Read.All"]);
    }

    #[test]
    fn onedrive_rows_per_operation() {
        let b = JobSpec::new(Service::OneDrive, Operation::Backup, UserSelection::All);
        assert_eq!(names(&b), ["User.Read.All", "Files.Read.All"]);
        let r = JobSpec::new(Service::OneDrive, Operation::Recovery, UserSelection::All);
        assert_eq!(names(&r), ["Files.ReadWrite.All"]);
        let d = JobSpec::new(Service::OneDrive, Operation::Discovery, UserSelection::All);
        // The matrix lists Files.Read.All for discovery too (finding provisioned drives).
        assert_eq!(names(&d), ["User.Read.All", "Files.Read.All"]);
    }

    #[test]
    fn conditional_rows_only_with_their_variant() {
        let mut spec = JobSpec::new(Service::Exchange, Operation::Recovery, UserSelection::All);
        assert!(!names(&spec).contains(&"full_access_as_app".to_string()));
        spec.conditions.insert("item_attachment".into());
        let reqs = required_permissions(&spec);
        let ews = reqs
            .iter()
            .find(|r| r.permission == "full_access_as_app")
            .expect("EWS row applies");
        assert_eq!(ews.api, Api::ExchangeOnline);
        assert_eq!(ews.condition.as_deref(), Some("item_attachment"));
        assert!(ews.caveat.unwrap().contains("2026-10-01"));
        assert_eq!(
            ews.app_role_id.as_deref(),
            Some("dc890d15-9560-4a4c-9b7f-a736ec74ec40")
        );
    }
}
