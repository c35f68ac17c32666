//! The m365bk permission gate.
//!
//! Before any job runs, [`authorize`] computes the exact permissions the job needs from the
//! compiled [`PermissionMatrix`] ([`required_permissions`]: service, operation, selected item
//! types, active conditional variants), acquires one access token per API the job calls, reads
//! each token's `roles` claim and compares. A job missing any permission is refused with a
//! [`PermissionReport`] — logged as one ERROR event naming each missing permission, its API,
//! its type, its app-role id and how to grant it — and no data request is sent. A granted job
//! becomes an [`AuthorizedJob`], the only way to get a Graph client into a worker.
//!
//! A higher-privileged permission satisfies a lower one only where Microsoft documents it
//! ([`satisfied_by`]: `Mail.ReadWrite` covers `Mail.Read`); the report says which one met
//! each requirement.
//!
//! ```
//! use m365bk_gate::{required_permissions, JobSpec, Operation, Service, UserSelection};
//! let spec = JobSpec::new(Service::OneDrive, Operation::Backup, UserSelection::All);
//! let names: Vec<_> = required_permissions(&spec).into_iter().map(|r| r.permission).collect();
//! assert_eq!(names, ["User.Read.All", "Files.Read.All"]);
//! ```

mod decision;
mod job;
mod matrix;
mod requirements;
mod selection;

pub use decision::{authorize, AuthorizedJob, GateContext, Grant, PermissionReport};
pub use job::{ItemType, JobId, JobSpec, Operation, Selection, Service, UserSelection};
pub use matrix::{satisfied_by, Api, MatrixRow, PermissionMatrix, PermissionType};
pub use requirements::{operations_for, required_permissions, Requirement};
pub use selection::{encode_segment, DirectoryUser};

/// Result alias for the gate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the gate did not authorise a job.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required permission is missing; the report names each one and the fix.
    #[error("job refused: missing {}: {}", .0.missing_summary(), .0.remedy())]
    Refused(Box<PermissionReport>),
    /// The token for `api` could not be acquired or read.
    #[error("could not get an access token for {api}: {source}")]
    Token {
        /// The API (audience) whose token failed.
        api: Api,
        /// The underlying failure.
        #[source]
        source: Box<m365bk_graph::Error>,
    },
    /// The job calls the SharePoint API but no SharePoint host is configured.
    #[error("this job needs a SharePoint API token, but tenant.sharepoint_host is not set: add `sharepoint_host = \"TENANT.sharepoint.com\"` to the [tenant] section of the config")]
    SharePointHostMissing,
}
