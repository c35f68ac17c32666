//! Resolving a job's selection into directory objects, with the authorised job's client.

use serde::{Deserialize, Serialize};

use crate::decision::AuthorizedJob;
use crate::job::UserSelection;

/// A user as the directory lists it (`GET /users`, https://learn.microsoft.com/graph/api/user-list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    /// Object id (GUID).
    pub id: String,
    /// Sign-in name, e.g. `adele.vance@contoso.onmicrosoft.com`.
    pub user_principal_name: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Primary SMTP address, when the user has a mailbox.
    #[serde(default)]
    pub mail: Option<String>,
}

const USER_SELECT: &str = "$select=id,userPrincipalName,displayName,mail";

impl AuthorizedJob {
    /// The users the job selects: every user (`GET /users`, paged) or each named one
    /// (`GET /users/{id | userPrincipalName}` through the job's [`m365bk_graph::Directory`]),
    /// in selection order.
    ///
    /// # Errors
    /// The Graph error of the first request that fails (an unknown user is a 404
    /// `Request_ResourceNotFound`).
    pub async fn resolve_users(&self) -> m365bk_graph::Result<Vec<DirectoryUser>> {
        match &self.spec().selection.users {
            UserSelection::All => {
                self.graph()
                    .list::<DirectoryUser>(&format!("/users?{USER_SELECT}&$top=999"), None)
                    .await
            }
            UserSelection::Users(names) => {
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    let user = self.directory().user(name).await?;
                    let user = serde_json::from_value::<DirectoryUser>(user).map_err(|e| {
                        m365bk_graph::Error::Decode {
                            url: format!("/users/{}", encode_segment(name)),
                            detail: format!("not a user object: {e}"),
                        }
                    })?;
                    out.push(user);
                }
                Ok(out)
            }
        }
    }
}

/// Percent-encodes one URL path segment (UPNs may hold `#`, `'`, non-ASCII).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
