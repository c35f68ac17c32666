//! Acquire the job's tokens, read their `roles`, decide, report.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use m365bk_graph::{Audience, Directory, GraphClient, TokenProvider};
use serde::Serialize;

use crate::job::{JobSpec, Operation, Service};
use crate::matrix::{satisfied_by, Api, PermissionType};
use crate::requirements::{required_permissions, Requirement};
use crate::{Error, Result};

/// What the gate needs to know about the tenant and the app.
#[derive(Clone)]
pub struct GateContext {
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// Token source for every audience.
    pub tokens: Arc<TokenProvider>,
    /// The Graph client handed to authorised workers.
    pub graph: GraphClient,
    /// Single-object directory reads (users, their drives), handed to authorised workers.
    pub directory: Arc<dyn Directory>,
    /// `TENANT.sharepoint.com`, needed only by jobs that call the SharePoint API.
    pub sharepoint_host: Option<String>,
}

/// A requirement that the token meets, and the permission that met it.
#[derive(Clone, Debug, Serialize)]
pub struct Grant {
    /// What was required.
    pub requirement: Requirement,
    /// The permission in the token that met it: the same name, or a documented higher one.
    pub met_by: String,
}

/// The gate's account of one job: every requirement, met or missing.
#[derive(Clone, Debug, Serialize)]
pub struct PermissionReport {
    /// The job.
    pub job_id: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Client (application) id.
    pub client_id: String,
    /// The job's service.
    pub service: Service,
    /// The job's operation.
    pub operation: Operation,
    /// Requirements the tokens meet.
    pub granted: Vec<Grant>,
    /// Requirements no token meets.
    pub missing: Vec<Requirement>,
    /// APIs whose token carried no `roles` claim at all: the app has no admin consent there.
    pub no_admin_consent: Vec<Api>,
}

impl PermissionReport {
    /// True when nothing is missing.
    pub fn is_granted(&self) -> bool {
        self.missing.is_empty()
    }

    /// What the operator must do, in one sentence per cause.
    pub fn remedy(&self) -> String {
        let mut s = String::new();
        if !self.no_admin_consent.is_empty() {
            let apis: Vec<&str> = self
                .no_admin_consent
                .iter()
                .map(|a| a.display_name())
                .collect();
            let _ = write!(
                s,
                "Admin consent not granted: the access token for {} has no roles claim, so the app {} has no consented application permission there. ",
                apis.join(", "),
                self.client_id
            );
        }
        if !self.missing.is_empty() {
            let _ = write!(
                s,
                "In the Entra admin center open App registrations > {} > API permissions, add the missing application permissions listed (Add a permission > the API named > Application permissions), then select \"Grant admin consent for\" tenant {}; the next token carries them.",
                self.client_id, self.tenant_id
            );
        }
        s
    }

    /// The missing permissions, each with API, type and app-role id, `; `-separated.
    pub fn missing_summary(&self) -> String {
        self.missing
            .iter()
            .map(|r| {
                format!(
                    "{} ({}, {}, app role id {})",
                    r.permission,
                    r.api,
                    r.kind,
                    r.app_role_id.as_deref().unwrap_or("unknown")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Emits the report: one ERROR event for a refused job, one INFO event (plus a WARN per
    /// caveat) for an authorised one.
    pub fn log(&self) {
        if !self.is_granted() {
            let consent = if self.no_admin_consent.is_empty() {
                String::new()
            } else {
                " (admin consent not granted)".to_string()
            };
            tracing::error!(
                message_id = "m365bk-job-refused",
                job_id = %self.job_id,
                tenant = %self.tenant_id,
                client_id = %self.client_id,
                service = %self.service,
                operation = %self.operation,
                missing = %self.missing_summary(),
                remedy = %self.remedy(),
                "job refused before any data request: missing {} permission(s){}: {}. {}",
                self.missing.len(),
                consent,
                self.missing_summary(),
                self.remedy()
            );
            return;
        }
        let met: Vec<String> = self
            .granted
            .iter()
            .map(|g| {
                if g.met_by == g.requirement.permission {
                    g.met_by.clone()
                } else {
                    format!(
                        "{} (met by {}, which includes it)",
                        g.requirement.permission, g.met_by
                    )
                }
            })
            .collect();
        tracing::info!(
            job_id = %self.job_id,
            tenant = %self.tenant_id,
            client_id = %self.client_id,
            service = %self.service,
            operation = %self.operation,
            "job authorised: {}",
            met.join(", ")
        );
        for g in &self.granted {
            if let Some(caveat) = g.requirement.caveat {
                tracing::warn!(
                    job_id = %self.job_id,
                    permission = %g.requirement.permission,
                    "{} is granted, but {}",
                    g.requirement.permission,
                    caveat
                );
            }
        }
    }
}

/// A job the gate has authorised. Only [`authorize`] constructs one, so a worker that takes
/// `&AuthorizedJob` cannot be started for a job that skipped the gate.
pub struct AuthorizedJob {
    spec: JobSpec,
    graph: GraphClient,
    directory: Arc<dyn Directory>,
    report: PermissionReport,
}

impl AuthorizedJob {
    /// The job as authorised.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }
    /// The Graph client for the job's calls.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }
    /// Directory reads (a user, a user's drive) for the job.
    pub fn directory(&self) -> &dyn Directory {
        self.directory.as_ref()
    }
    /// Which permission met each requirement.
    pub fn report(&self) -> &PermissionReport {
        &self.report
    }
}

fn audience(api: Api, ctx: &GateContext) -> Result<Audience> {
    Ok(match api {
        Api::Graph => Audience::Graph,
        Api::ExchangeOnline => Audience::ExchangeOnline,
        Api::SharePoint => Audience::SharePoint {
            tenant_host: ctx
                .sharepoint_host
                .clone()
                .ok_or(Error::SharePointHostMissing)?,
        },
    })
}

/// Decides whether `spec` may run: computes its permissions, gets one token per API it needs
/// (the only requests sent), reads each token's `roles` claim and compares.
///
/// Logs the decision ([`PermissionReport::log`]).
///
/// # Errors
/// [`Error::Refused`] with the report when a permission is missing (including tokens with no
/// `roles` claim: no admin consent); [`Error::Token`] when a token cannot be acquired (wrong
/// secret, unknown app, unreachable authority); [`Error::SharePointHostMissing`].
pub async fn authorize(ctx: &GateContext, spec: JobSpec) -> Result<AuthorizedJob> {
    let required = required_permissions(&spec);
    let apis: BTreeSet<Api> = required.iter().map(|r| r.api).collect();
    let mut held: Vec<(Api, Option<BTreeSet<String>>)> = Vec::new();
    for api in apis {
        let token = ctx
            .tokens
            .token(&audience(api, ctx)?)
            .await
            .map_err(|source| Error::Token {
                api,
                source: Box::new(source),
            })?;
        let claims = token.claims().map_err(|source| Error::Token {
            api,
            source: Box::new(source),
        })?;
        held.push((api, claims.roles.map(|r| r.into_iter().collect())));
    }
    let mut report = PermissionReport {
        job_id: spec.id.to_string(),
        tenant_id: ctx.tenant_id.clone(),
        client_id: ctx.client_id.clone(),
        service: spec.service,
        operation: spec.operation,
        granted: Vec::new(),
        missing: Vec::new(),
        no_admin_consent: held
            .iter()
            .filter(|(_, roles)| roles.is_none())
            .map(|(api, _)| *api)
            .collect(),
    };
    for req in required {
        let roles = held
            .iter()
            .find(|(api, _)| *api == req.api)
            .and_then(|(_, r)| r.as_ref());
        // m365bk authenticates as the application (client credentials), so only application
        // permissions can ever appear; a delegated requirement cannot be met.
        let met_by = match (req.kind, roles) {
            (PermissionType::Application, Some(roles)) => satisfied_by(&req.permission)
                .into_iter()
                .find(|p| roles.contains(*p))
                .map(str::to_string),
            _ => None,
        };
        match met_by {
            Some(met_by) => report.granted.push(Grant {
                requirement: req,
                met_by,
            }),
            None => report.missing.push(req),
        }
    }
    report.log();
    if !report.is_granted() {
        return Err(Error::Refused(Box::new(report)));
    }
    Ok(AuthorizedJob {
        spec,
        graph: ctx.graph.clone(),
        directory: ctx.directory.clone(),
        report,
    })
}
