//! Per-endpoint authorisation from Microsoft's permission data
//! (`data/graph-permissions-map.json`, `endpointIndex`: "METHOD /path/template" → the
//! application permissions that grant it), corrected by [`OVERRIDES`] where that data is wrong
//! or missing for an endpoint the simulator serves.

use std::collections::HashMap;

use serde::Deserialize;

static PERMISSION_MAP: &str = include_str!("../data/graph-permissions-map.json");

/// Which service answers the endpoint; decides the shape of a 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Entra ID directory: `Authorization_RequestDenied`.
    Directory,
    /// Exchange Online (mail, contacts, calendar, mailbox settings): `ErrorAccessDenied`.
    Exchange,
    /// OneDrive/SharePoint: `accessDenied`.
    Files,
    Other,
}

fn workload(area: &str) -> Workload {
    match area {
        "directory" => Workload::Directory,
        "mail" | "mailboxsettings" | "contacts" | "calendar" | "groupmailbox" => Workload::Exchange,
        "onedrive" | "sharepoint" => Workload::Files,
        _ => Workload::Other,
    }
}

#[derive(Debug, Clone)]
pub(crate) struct EndpointRule {
    pub workload: Workload,
    pub app_roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed,
    /// The token's roles grant none of the endpoint's permissions.
    Denied(Workload),
    /// No permission data for the endpoint: refused (fail closed).
    NoRule,
}

enum Change {
    /// Also grant the endpoint with these permissions.
    Add(&'static [&'static str]),
    /// Replace (or define) the endpoint's permissions.
    Set {
        area: &'static str,
        roles: &'static [&'static str],
    },
}

struct Override {
    key: &'static str,
    change: Change,
    /// Why the data is wrong or missing here (logged at debug level on start).
    why: &'static str,
}

/// Corrections to Microsoft's permission data; each entry says why.
const OVERRIDES: &[Override] = &[
    Override {
        key: "POST /drives/{id}/items/{id}/createuploadsession",
        change: Change::Add(&["Files.ReadWrite.All"]),
        why: "Microsoft's data lists only Sites.ReadWrite.All. The project requires \
              Files.ReadWrite.All to grant upload sessions like every other drive write \
              (PUT …/content, POST …/children). Note: the current driveitem-createuploadsession \
              page also lists only Sites.ReadWrite.All for application permissions.",
    },
    Override {
        key: "POST /drives/{id}/items/{id}:/{id}:/createuploadsession",
        change: Change::Set {
            area: "onedrive",
            roles: &["Files.ReadWrite.All", "Sites.ReadWrite.All"],
        },
        why: "Path-addressed form of createUploadSession (driveitem-createuploadsession page, \
              HTTP request section) is missing from the data; same permissions as the id form.",
    },
    Override {
        key: "POST /users/{id}/messages/{id}/attachments/createuploadsession",
        change: Change::Set {
            area: "mail",
            roles: &["Mail.ReadWrite"],
        },
        why: "The data merges the message and event forms of attachment-createuploadsession \
              (Calendars.ReadWrite least); for a message the page's permission is \
              Mail.ReadWrite.",
    },
    Override {
        key: "GET /users/{id}/messages/{id}",
        change: Change::Add(&["Mail.ReadWrite"]),
        why: "message-get page: Application Mail.ReadBasic.All (least), Mail.Read, \
              Mail.ReadWrite (higher); the data omits Mail.ReadWrite.",
    },
    Override {
        key: "GET /users/{id}/messages/{id}/$value",
        change: Change::Set {
            area: "mail",
            roles: &["Mail.Read", "Mail.ReadWrite"],
        },
        why: "message-get page (Get MIME content) lists Mail.ReadWrite, which the data omits; \
              Mail.ReadBasic.All must not grant $value because the MIME content includes the \
              body, which Mail.ReadBasic.All excludes (permissions reference).",
    },
    Override {
        key: "GET /users/{id}/contactfolders/{id}/contacts",
        change: Change::Set {
            area: "contacts",
            roles: &["Contacts.Read", "Contacts.ReadWrite"],
        },
        why: "contactfolder-list-contacts page: Application Contacts.Read, Contacts.ReadWrite; \
              missing from the data.",
    },
    Override {
        key: "GET /users/{id}/contactfolders/{id}",
        change: Change::Set {
            area: "contacts",
            roles: &["Contacts.Read", "Contacts.ReadWrite"],
        },
        why: "contactfolder-get page: Application Contacts.Read, Contacts.ReadWrite; missing \
              from the data.",
    },
    Override {
        key: "GET /users/{id}/contacts",
        change: Change::Set {
            area: "contacts",
            roles: &["Contacts.Read", "Contacts.ReadWrite"],
        },
        why: "user-list-contacts page: Application Contacts.Read, Contacts.ReadWrite; missing \
              from the data.",
    },
    Override {
        key: "GET /users/{id}/events/{id}",
        change: Change::Add(&["Calendars.ReadWrite"]),
        why: "event-get page lists Calendars.ReadWrite as a higher-privileged application \
              permission; the data omits it.",
    },
    Override {
        key: "GET /users/{id}/calendars/{id}",
        change: Change::Set {
            area: "calendar",
            roles: &[
                "Calendars.ReadBasic",
                "Calendars.Read",
                "Calendars.ReadWrite",
            ],
        },
        why: "calendar-get page: Application Calendars.ReadBasic, Calendars.Read, \
              Calendars.ReadWrite; missing from the data.",
    },
    Override {
        key: "DELETE /drives/{id}/items/{id}",
        change: Change::Set {
            area: "onedrive",
            roles: &["Files.ReadWrite.All", "Sites.ReadWrite.All"],
        },
        why: "driveitem-delete page: Application Files.ReadWrite.All, Sites.ReadWrite.All; \
              missing from the data.",
    },
];

#[derive(Deserialize)]
struct MapFile {
    #[serde(rename = "endpointIndex")]
    endpoint_index: HashMap<String, IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    area: String,
    #[serde(rename = "Application", default)]
    application: Option<SchemeEntry>,
}

#[derive(Deserialize)]
struct SchemeEntry {
    #[serde(default)]
    all: Vec<String>,
}

/// The effective permission table.
#[derive(Debug, Clone)]
pub(crate) struct PermissionTable {
    rules: HashMap<String, EndpointRule>,
}

impl PermissionTable {
    /// Parses the compiled-in data and applies [`OVERRIDES`].
    ///
    /// # Errors
    /// The JSON text when the compiled-in data does not parse (a build defect).
    pub(crate) fn load() -> Result<Self, String> {
        let file: MapFile = serde_json::from_str(PERMISSION_MAP).map_err(|e| e.to_string())?;
        let mut rules: HashMap<String, EndpointRule> = file
            .endpoint_index
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    EndpointRule {
                        workload: workload(&v.area),
                        app_roles: v.application.map(|a| a.all).unwrap_or_default(),
                    },
                )
            })
            .collect();
        for o in OVERRIDES {
            tracing::debug!(endpoint = o.key, why = o.why, "permission override");
            let key = o.key.to_ascii_lowercase();
            match &o.change {
                Change::Add(roles) => {
                    if let Some(rule) = rules.get_mut(&key) {
                        for r in *roles {
                            if !rule.app_roles.iter().any(|x| x == r) {
                                rule.app_roles.push((*r).to_string());
                            }
                        }
                    }
                }
                Change::Set { area, roles } => {
                    rules.insert(
                        key,
                        EndpointRule {
                            workload: workload(area),
                            app_roles: roles.iter().map(|r| (*r).to_string()).collect(),
                        },
                    );
                }
            }
        }
        Ok(PermissionTable { rules })
    }

    /// The rule for `METHOD /template`; a path-addressed drive template (`…/items/{id}:/{id}:…`)
    /// falls back to the id-addressed one when the data has no entry of its own.
    pub(crate) fn rule(&self, method: &str, template: &str) -> Option<&EndpointRule> {
        let key = format!("{method} {template}").to_ascii_lowercase();
        self.rules.get(&key).or_else(|| {
            let plain = key.replace(":/{id}:", "");
            self.rules.get(&plain)
        })
    }

    /// Whether a token with these roles (`None` = no `roles` claim) may call the endpoint.
    pub(crate) fn check(&self, method: &str, template: &str, roles: Option<&[String]>) -> Decision {
        let Some(rule) = self.rule(method, template) else {
            return Decision::NoRule;
        };
        let granted = roles.unwrap_or_default().iter().any(|r| {
            rule.app_roles
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(r))
        });
        if granted {
            Decision::Allowed
        } else {
            Decision::Denied(rule.workload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn data_parses_and_overrides_apply() {
        let t = PermissionTable::load().unwrap();
        let basic = roles(&["Mail.ReadBasic.All"]);
        assert_eq!(
            t.check("GET", "/users/{id}/messages/{id}", Some(&basic)),
            Decision::Allowed
        );
        assert_eq!(
            t.check("GET", "/users/{id}/messages/{id}/$value", Some(&basic)),
            Decision::Denied(Workload::Exchange)
        );
        let rw = roles(&["Mail.ReadWrite"]);
        assert_eq!(
            t.check("GET", "/users/{id}/messages/{id}/$value", Some(&rw)),
            Decision::Allowed
        );
        let files = roles(&["Files.ReadWrite.All"]);
        assert_eq!(
            t.check(
                "POST",
                "/drives/{id}/items/{id}/createUploadSession",
                Some(&files)
            ),
            Decision::Allowed
        );
        assert_eq!(
            t.check(
                "POST",
                "/drives/{id}/items/{id}:/{id}:/createuploadsession",
                Some(&files)
            ),
            Decision::Allowed
        );
        // Path-addressed GET falls back to the id-addressed entry.
        let read = roles(&["Files.Read.All"]);
        assert_eq!(
            t.check("GET", "/drives/{id}/items/{id}:/{id}:/content", Some(&read)),
            Decision::Allowed
        );
        assert_eq!(
            t.check("GET", "/users/{id}", None),
            Decision::Denied(Workload::Directory)
        );
        assert_eq!(t.check("GET", "/nothing", Some(&read)), Decision::NoRule);
    }
}
