//! The permission matrix: what administrators are told to grant, per service and operation.
//!
//! Compiled in from `data/permission-matrix.csv` (a copy of the project's shared
//! `permission-matrix.csv`) and `data/permission-ids.csv` (app-role ids from Microsoft's
//! `microsoft-graph-devx-content` provisioning data, sources listed per row in the file).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::Serialize;

use crate::job::{Operation, Service};

const MATRIX_CSV: &str = include_str!("../data/permission-matrix.csv");
const IDS_CSV: &str = include_str!("../data/permission-ids.csv");

/// The API (resource application) a permission belongs to; it is also the token audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Microsoft Graph, `aud` `https://graph.microsoft.com`, appId `00000003-0000-0000-c000-000000000000`.
    Graph,
    #[serde(rename = "exchange")]
    /// Office 365 Exchange Online, `aud` `https://outlook.office365.com`, appId `00000002-0000-0ff1-ce00-000000000000`.
    ExchangeOnline,
    #[serde(rename = "sharepoint")]
    /// Office 365 SharePoint Online, `aud` `https://TENANT.sharepoint.com`, appId `00000003-0000-0ff1-ce00-000000000000`.
    SharePoint,
}

impl Api {
    /// The name Entra ID shows under "API permissions".
    pub fn display_name(self) -> &'static str {
        match self {
            Api::Graph => "Microsoft Graph",
            Api::ExchangeOnline => "Office 365 Exchange Online",
            Api::SharePoint => "Office 365 SharePoint Online",
        }
    }

    /// The resource application's appId (the `resourceAppId` of a required resource access).
    pub fn resource_app_id(self) -> &'static str {
        match self {
            Api::Graph => "00000003-0000-0000-c000-000000000000",
            Api::ExchangeOnline => "00000002-0000-0ff1-ce00-000000000000",
            Api::SharePoint => "00000003-0000-0ff1-ce00-000000000000",
        }
    }

    fn from_csv(s: &str) -> Api {
        match s {
            "graph" => Api::Graph,
            "exchange" => Api::ExchangeOnline,
            "sharepoint" => Api::SharePoint,
            other => panic!("permission-matrix.csv: unknown resource {other:?}"),
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// Application permissions arrive in the token's `roles` claim, delegated ones in `scp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionType {
    /// An app role granted to the application itself (client-credentials tokens, `roles` claim).
    Application,
    /// A scope acting on behalf of a signed-in user (`scp` claim).
    Delegated,
}

impl fmt::Display for PermissionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PermissionType::Application => "application permission",
            PermissionType::Delegated => "delegated permission",
        })
    }
}

/// One row of the matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatrixRow {
    /// Permission name as Entra ID spells it, e.g. `Mail.Read`.
    pub permission: String,
    /// The API the permission belongs to.
    pub api: Api,
    /// Application or delegated.
    pub kind: PermissionType,
    /// The service whose jobs need it.
    pub service: Service,
    /// The operations of that service that need it.
    pub operations: Vec<Operation>,
    /// Empty when always needed; otherwise the job variants (`|`-separated in the CSV) that need it.
    pub conditions: Vec<String>,
    /// Entra ID's description.
    pub description: String,
}

/// The compiled matrix plus app-role ids.
#[derive(Debug)]
pub struct PermissionMatrix {
    rows: Vec<MatrixRow>,
    /// (api, permission) → app-role id.
    role_ids: BTreeMap<(Api, String), String>,
}

impl PermissionMatrix {
    /// The matrix compiled into this binary.
    ///
    /// # Panics
    /// Never at run time for a released binary: the compiled CSV is checked by this crate's tests.
    pub fn builtin() -> &'static PermissionMatrix {
        static MATRIX: OnceLock<PermissionMatrix> = OnceLock::new();
        MATRIX.get_or_init(|| PermissionMatrix::parse(MATRIX_CSV, IDS_CSV))
    }

    fn parse(matrix_csv: &str, ids_csv: &str) -> PermissionMatrix {
        let data: String = matrix_csv
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let mut reader = csv::Reader::from_reader(data.as_bytes());
        let mut rows = Vec::new();
        for record in reader.records() {
            let r = record.expect("permission-matrix.csv is valid CSV");
            let kind = match &r[2] {
                "application" => PermissionType::Application,
                "delegated" => PermissionType::Delegated,
                other => panic!("permission-matrix.csv: unknown type {other:?}"),
            };
            rows.push(MatrixRow {
                permission: r[0].to_string(),
                api: Api::from_csv(&r[1]),
                kind,
                service: r[3].parse().expect("permission-matrix.csv: known service"),
                operations: r[4]
                    .split_whitespace()
                    .map(|o| o.parse().expect("permission-matrix.csv: known operation"))
                    .collect(),
                conditions: r[5]
                    .split('|')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                description: r[6].to_string(),
            });
        }
        let mut role_ids = BTreeMap::new();
        let mut reader = csv::Reader::from_reader(ids_csv.as_bytes());
        for record in reader.records() {
            let r = record.expect("permission-ids.csv is valid CSV");
            let api = match &r[1] {
                "00000003-0000-0000-c000-000000000000" => Api::Graph,
                "00000002-0000-0ff1-ce00-000000000000" => Api::ExchangeOnline,
                "00000003-0000-0ff1-ce00-000000000000" => Api::SharePoint,
                _ => continue,
            };
            role_ids.insert((api, r[0].to_string()), r[3].to_string());
        }
        PermissionMatrix { rows, role_ids }
    }

    /// Every row, in file order.
    pub fn rows(&self) -> &[MatrixRow] {
        &self.rows
    }

    /// The app-role id Entra ID assigns to `permission` of `api`, if known.
    pub fn app_role_id(&self, api: Api, permission: &str) -> Option<&str> {
        self.role_ids
            .get(&(api, permission.to_string()))
            .map(String::as_str)
    }

    /// The matrix as a Markdown table (README's permission table is this text): one line per
    /// row, with the API's display name, the type, the operations and the condition.
    pub fn markdown_table(&self) -> String {
        let mut out = String::from(
            "| permission | API | type | service | operations | only when |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let ops: Vec<&str> = r.operations.iter().map(|o| o.as_str()).collect();
            let kind = match r.kind {
                PermissionType::Application => "application",
                PermissionType::Delegated => "delegated",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.permission,
                r.api.display_name(),
                kind,
                r.service,
                ops.join(" "),
                r.conditions.join(", ")
            ));
        }
        out
    }

    /// Every condition name the matrix uses (job variants that add requirements).
    pub fn conditions(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .rows
            .iter()
            .flat_map(|r| r.conditions.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Higher-privileged permissions that Microsoft documents as including a lower one
/// (the Graph permissions reference: a `ReadWrite` permission "allows the app to read and
/// write", i.e. everything the matching `Read` permission allows). Nothing else substitutes.
///
/// Returns the permissions (of the same API) that satisfy `permission`, the permission itself
/// first.
pub fn satisfied_by(permission: &str) -> Vec<&str> {
    const IMPLIES: &[(&str, &[&str])] = &[
        ("Mail.Read", &["Mail.ReadWrite"]),
        ("Calendars.Read", &["Calendars.ReadWrite"]),
        ("Contacts.Read", &["Contacts.ReadWrite"]),
        ("MailboxSettings.Read", &["MailboxSettings.ReadWrite"]),
        ("Notes.Read.All", &["Notes.ReadWrite.All"]),
        ("Files.Read.All", &["Files.ReadWrite.All"]),
        ("User.Read.All", &["User.ReadWrite.All"]),
        ("Group.Read.All", &["Group.ReadWrite.All"]),
        ("GroupMember.Read.All", &["GroupMember.ReadWrite.All"]),
        (
            "Sites.Read.All",
            &[
                "Sites.ReadWrite.All",
                "Sites.Manage.All",
                "Sites.FullControl.All",
            ],
        ),
        (
            "Sites.ReadWrite.All",
            &["Sites.Manage.All", "Sites.FullControl.All"],
        ),
        ("Sites.Manage.All", &["Sites.FullControl.All"]),
        ("TeamSettings.Read.All", &["TeamSettings.ReadWrite.All"]),
        (
            "ChannelSettings.Read.All",
            &["ChannelSettings.ReadWrite.All"],
        ),
        ("TeamworkTag.Read.All", &["TeamworkTag.ReadWrite.All"]),
        ("TeamsTab.Read.All", &["TeamsTab.ReadWrite.All"]),
        ("TeamMember.Read.All", &["TeamMember.ReadWrite.All"]),
    ];
    let mut out = vec![permission];
    if let Some((_, higher)) = IMPLIES.iter().find(|(p, _)| *p == permission) {
        out.extend_from_slice(higher);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matrix_parses_every_row_and_knows_every_role_id() {
        let m = PermissionMatrix::builtin();
        let data_rows = MATRIX_CSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count()
            - 1;
        assert_eq!(m.rows().len(), data_rows);
        for row in m.rows() {
            assert!(
                m.app_role_id(row.api, &row.permission).is_some(),
                "no app-role id for {} ({})",
                row.permission,
                row.api
            );
        }
        assert_eq!(
            m.app_role_id(Api::Graph, "Mail.Read"),
            Some("810c84a8-4a9e-49e6-bf7d-12d183f40d01")
        );
        assert_eq!(
            m.app_role_id(Api::SharePoint, "Sites.FullControl.All"),
            Some("678536fe-1083-478a-9c59-b99265e6b0d3")
        );
    }

    #[test]
    fn conditions_are_the_csv_variants() {
        assert_eq!(
            PermissionMatrix::builtin().conditions(),
            vec![
                "certificate_auth",
                "contact_personal_note_over_4mb",
                "group_posts",
                "huge_item",
                "item_attachment",
                "sticky_note"
            ]
        );
    }

    #[test]
    fn only_documented_supersets_satisfy() {
        assert_eq!(
            satisfied_by("Mail.Read"),
            vec!["Mail.Read", "Mail.ReadWrite"]
        );
        assert_eq!(satisfied_by("Mail.ReadWrite"), vec!["Mail.ReadWrite"]);
        assert_eq!(
            satisfied_by("User.Read.All"),
            vec!["User.Read.All", "User.ReadWrite.All"]
        );
    }
}
