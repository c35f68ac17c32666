//! `forget`: which snapshots a retention policy keeps, and deleting the others.
//!
//! Snapshots are grouped per backed-up resource (service + resource id). Within a group,
//! newest first, a snapshot is kept if any rule keeps it:
//!
//! - `keep_last` n: the n newest snapshots;
//! - `keep_hourly`/`keep_daily`/`keep_weekly`/`keep_monthly`/`keep_yearly` n: the newest
//!   snapshot of each of the n newest hours/days/ISO weeks/months/years (UTC) that have one;
//! - `keep_tags`: every snapshot carrying one of these tags.
//!
//! These are the rules restic documents for `forget --keep-*` (with resources in place of
//! host and paths). Forgetting deletes only snapshot objects; `prune` frees the data.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::lock::{LockKind, LockOptions};
use crate::repository::{Repository, UnreadableSnapshot};
use crate::snapshot::{snapshot_path, Snapshot};

/// A retention policy, and which snapshots it applies to. Counts of 0 are off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetOptions {
    /// Keep the n newest snapshots of each resource.
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the n newest hours with one.
    pub keep_hourly: u32,
    /// … days.
    pub keep_daily: u32,
    /// … ISO 8601 weeks.
    pub keep_weekly: u32,
    /// … months.
    pub keep_monthly: u32,
    /// … years.
    pub keep_yearly: u32,
    /// Keep every snapshot carrying any of these tags.
    pub keep_tags: Vec<String>,
    /// Only consider snapshots carrying any of these tags (empty: all snapshots). Others are
    /// neither kept nor removed: they are left alone and not listed.
    pub tags: Vec<String>,
}

impl ForgetOptions {
    /// True if no rule keeps anything (such a policy would forget every snapshot).
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_tags.is_empty()
    }

    /// Refuses a policy that keeps nothing, before anything is read.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`], naming the rules to give.
    pub fn validate(&self) -> Result<()> {
        if self.keeps_nothing() {
            return Err(Error::InvalidPolicy {
                detail: "no retention rule given, so every snapshot would be forgotten: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-tag".to_owned(),
            });
        }
        Ok(())
    }
}

/// One snapshot in a [`ForgetPlan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSnapshot {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time (UTC).
    pub time: DateTime<Utc>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Why it is kept: `"last"`, `"hourly"`, `"daily"`, `"weekly"`, `"monthly"`, `"yearly"`,
    /// `"tag"` (empty for removed snapshots).
    pub reasons: Vec<String>,
}

/// The decision for one resource's snapshots, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetGroup {
    /// Service, e.g. `"exchange"`.
    pub service: String,
    /// Resource id.
    pub resource_id: String,
    /// The snapshots' [`crate::SnapshotDraft::selection`] (empty: whole resource).
    #[serde(default)]
    pub selection: Vec<String>,
    /// Resource display name (of the newest snapshot).
    pub resource_name: String,
    /// Snapshots kept, with the rules that keep them.
    pub keep: Vec<PlannedSnapshot>,
    /// Snapshots to forget.
    pub remove: Vec<PlannedSnapshot>,
}

/// What a policy keeps and removes, per resource (sorted by service, then resource id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetPlan {
    /// One entry per resource that has snapshots the policy applies to.
    pub groups: Vec<ForgetGroup>,
}

impl ForgetPlan {
    /// Applies `opts` to `snapshots` (any order). Pure: no I/O.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] if the policy keeps nothing.
    pub fn new(snapshots: &[Snapshot], opts: &ForgetOptions) -> Result<ForgetPlan> {
        opts.validate()?;
        // Per service, resource and selection: a snapshot of some item types (`backup --items`)
        // is not a newer copy of a whole-resource one, and must not push it out.
        let mut groups: BTreeMap<(&str, &str, &[String]), Vec<&Snapshot>> = BTreeMap::new();
        for s in snapshots {
            if !opts.tags.is_empty() && !s.tags.iter().any(|t| opts.tags.contains(t)) {
                continue;
            }
            groups
                .entry((
                    s.service.as_str(),
                    s.resource_id.as_str(),
                    s.selection.as_slice(),
                ))
                .or_default()
                .push(s);
        }
        let mut plan = ForgetPlan::default();
        for ((service, resource_id, selection), mut list) in groups {
            list.sort_by_key(|s| std::cmp::Reverse((s.time, s.id)));
            let mut group = ForgetGroup {
                service: service.to_owned(),
                resource_id: resource_id.to_owned(),
                selection: selection.to_vec(),
                resource_name: list[0].resource_name.clone(),
                keep: Vec::new(),
                remove: Vec::new(),
            };
            let mut last_left = opts.keep_last;
            let mut buckets = [
                Bucket::new("hourly", opts.keep_hourly, hour_key),
                Bucket::new("daily", opts.keep_daily, day_key),
                Bucket::new("weekly", opts.keep_weekly, week_key),
                Bucket::new("monthly", opts.keep_monthly, month_key),
                Bucket::new("yearly", opts.keep_yearly, year_key),
            ];
            for s in list {
                let mut reasons = Vec::new();
                if last_left > 0 {
                    last_left -= 1;
                    reasons.push("last".to_owned());
                }
                for b in &mut buckets {
                    if b.keeps(s.time) {
                        reasons.push(b.name.to_owned());
                    }
                }
                if s.tags.iter().any(|t| opts.keep_tags.contains(t)) {
                    reasons.push("tag".to_owned());
                }
                let planned = PlannedSnapshot {
                    id: s.id,
                    time: s.time,
                    tags: s.tags.clone(),
                    reasons,
                };
                if planned.reasons.is_empty() {
                    group.remove.push(planned);
                } else {
                    group.keep.push(planned);
                }
            }
            plan.groups.push(group);
        }
        Ok(plan)
    }

    /// Ids of the snapshots to forget.
    pub fn to_remove(&self) -> Vec<SnapshotId> {
        self.groups
            .iter()
            .flat_map(|g| g.remove.iter().map(|s| s.id))
            .collect()
    }
}

/// One time-bucket rule: keeps the newest snapshot of each of the `left` newest buckets.
struct Bucket {
    name: &'static str,
    left: u32,
    last: Option<(i32, u32, u32, u32)>,
    key: fn(DateTime<Utc>) -> (i32, u32, u32, u32),
}

impl Bucket {
    fn new(name: &'static str, count: u32, key: fn(DateTime<Utc>) -> (i32, u32, u32, u32)) -> Self {
        Bucket {
            name,
            left: count,
            last: None,
            key,
        }
    }

    /// Called newest first: true if `time` opens a bucket not seen yet and some are left.
    fn keeps(&mut self, time: DateTime<Utc>) -> bool {
        if self.left == 0 {
            return false;
        }
        let key = (self.key)(time);
        if self.last == Some(key) {
            return false;
        }
        self.last = Some(key);
        self.left -= 1;
        true
    }
}

fn hour_key(t: DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), t.hour())
}
fn day_key(t: DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), 0)
}
fn week_key(t: DateTime<Utc>) -> (i32, u32, u32, u32) {
    let w = t.iso_week();
    (w.year(), w.week(), 0, 0)
}
fn month_key(t: DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), 0, 0)
}
fn year_key(t: DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), 0, 0, 0)
}

/// What [`Repository::forget`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetReport {
    /// The decision, per resource.
    pub plan: ForgetPlan,
    /// Snapshot objects deleted (0 in a dry run).
    pub removed: u64,
    /// True if nothing was deleted because it was a dry run.
    pub dry_run: bool,
    /// Snapshots that could not be read, so no rule could weigh them: all kept. Remove a
    /// damaged one with [`Repository::forget_snapshots`] (`m365bk forget --snapshot ID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<UnreadableSnapshot>,
}

impl Repository {
    /// Applies a retention policy: plans with [`ForgetPlan::new`] over all snapshots, then
    /// (unless `dry_run`) deletes the snapshot objects to forget, under a shared
    /// [`LockKind::Forget`] lock. Data stays until `prune`.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`], [`Error::RepositoryLocked`] (while a prune runs),
    /// [`Error::Backend`]. A snapshot that cannot be read is kept and named in
    /// [`ForgetReport::unreadable`].
    pub async fn forget(
        &self,
        opts: &ForgetOptions,
        dry_run: bool,
        lock: &LockOptions,
    ) -> Result<ForgetReport> {
        self.forget_where(opts, dry_run, lock, |_| true).await
    }

    /// [`Repository::forget`], applied only to the snapshots `filter` selects (e.g. one
    /// service's); the others are left alone and not listed.
    ///
    /// # Errors
    /// As [`Repository::forget`].
    pub async fn forget_where(
        &self,
        opts: &ForgetOptions,
        dry_run: bool,
        lock: &LockOptions,
        filter: impl Fn(&Snapshot) -> bool,
    ) -> Result<ForgetReport> {
        // Refuse before taking a lock or reading anything.
        opts.validate()?;
        let held = self.lock(LockKind::Forget, lock).await?;
        let report = self.forget_locked(opts, dry_run, filter).await;
        held.release().await;
        report
    }

    async fn forget_locked(
        &self,
        opts: &ForgetOptions,
        dry_run: bool,
        filter: impl Fn(&Snapshot) -> bool,
    ) -> Result<ForgetReport> {
        let scan = self.scan_snapshots().await?;
        let mut snapshots = scan.snapshots;
        snapshots.retain(|s| filter(s));
        let plan = ForgetPlan::new(&snapshots, opts)?;
        let mut report = ForgetReport {
            removed: 0,
            dry_run,
            plan,
            unreadable: scan.unreadable,
        };
        if !dry_run {
            report.removed = self.delete_snapshots(report.plan.to_remove()).await?;
            tracing::info!(removed = report.removed, "snapshots forgotten");
        }
        Ok(report)
    }

    /// Deletes exactly the snapshot objects `ids` (readable or not: this is how a damaged
    /// snapshot is removed), under the same shared lock as [`Repository::forget`]. Data
    /// stays until `prune`. Resolve prefixes first with [`Repository::resolve_snapshot_id`].
    /// Returns how many were deleted (0 in a dry run, which only checks that each exists).
    ///
    /// # Errors
    /// [`Error::SnapshotNotFound`] naming the first id that is not in the repository (nothing
    /// is deleted then), [`Error::RepositoryLocked`] (while a prune runs), [`Error::Backend`].
    pub async fn forget_snapshots(
        &self,
        ids: &[SnapshotId],
        dry_run: bool,
        lock: &LockOptions,
    ) -> Result<u64> {
        let held = self.lock(LockKind::Forget, lock).await?;
        let removed = self.forget_snapshots_locked(ids, dry_run).await;
        held.release().await;
        let removed = removed?;
        tracing::info!(removed, dry_run, "snapshots forgotten by id");
        Ok(removed)
    }

    async fn forget_snapshots_locked(&self, ids: &[SnapshotId], dry_run: bool) -> Result<u64> {
        let present: std::collections::HashSet<SnapshotId> =
            self.inner.snapshot_ids().await?.into_iter().collect();
        if let Some(id) = ids.iter().find(|id| !present.contains(id)) {
            return Err(Error::SnapshotNotFound { id: id.to_hex() });
        }
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        if dry_run {
            return Ok(0);
        }
        self.delete_snapshots(ids).await
    }

    /// Deletes snapshot objects (one already gone counts as deleted); returns how many.
    async fn delete_snapshots(&self, ids: Vec<SnapshotId>) -> Result<u64> {
        let inner = &self.inner;
        let results: Vec<Result<()>> = futures::stream::iter(ids)
            .map(|id| async move {
                let path = snapshot_path(&id);
                match inner.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(Error::backend("delete", path.to_string())(e)),
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut removed = 0;
        for r in results {
            r?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ContentRef;
    use chrono::TimeZone;

    fn snap(n: u8, resource: &str, time: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            id: SnapshotId::from_bytes([n; 32]),
            time: DateTime::parse_from_rfc3339(time)
                .unwrap()
                .with_timezone(&Utc),
            hostname: "h".into(),
            service: "exchange".into(),
            resource_id: resource.into(),
            resource_name: format!("{resource}@contoso.com"),
            job_id: "j".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            selection: Vec::new(),
            parent: None,
            tree: ContentRef::default(),
            item_count: 0,
            total_size: 0,
            state: serde_json::Value::Null,
            skipped: Vec::new(),
        }
    }

    /// Kept snapshot numbers per resource, ascending.
    fn kept(plan: &ForgetPlan) -> BTreeMap<String, Vec<u8>> {
        plan.groups
            .iter()
            .map(|g| {
                let mut k: Vec<u8> = g.keep.iter().map(|s| s.id.as_bytes()[0]).collect();
                k.sort();
                (g.resource_id.clone(), k)
            })
            .collect()
    }

    fn series() -> Vec<Snapshot> {
        // Resource "a": a realistic series, two backups on some days.
        vec![
            snap(1, "a", "2025-12-31T23:00:00Z", &[]),
            snap(2, "a", "2026-01-01T01:00:00Z", &[]),
            snap(3, "a", "2026-01-01T13:00:00Z", &["monthly-audit"]),
            snap(4, "a", "2026-01-05T02:00:00Z", &[]), // Monday, ISO week 2
            snap(5, "a", "2026-01-11T02:00:00Z", &[]), // Sunday, ISO week 2
            snap(6, "a", "2026-02-01T02:00:00Z", &[]),
            snap(7, "a", "2026-02-01T02:30:00Z", &[]),
            snap(8, "a", "2026-02-02T02:00:00Z", &[]),
            // Resource "b": its own group.
            snap(20, "b", "2026-01-01T00:00:00Z", &[]),
            snap(21, "b", "2026-02-02T00:00:00Z", &[]),
        ]
    }

    #[test]
    fn policy_table() {
        let o = ForgetOptions::default;
        let cases: Vec<(&str, ForgetOptions, Vec<u8>, Vec<u8>)> = vec![
            (
                "last 1",
                ForgetOptions {
                    keep_last: 1,
                    ..o()
                },
                vec![8],
                vec![21],
            ),
            (
                "last 3",
                ForgetOptions {
                    keep_last: 3,
                    ..o()
                },
                vec![6, 7, 8],
                vec![20, 21],
            ),
            (
                "last 100 keeps all",
                ForgetOptions {
                    keep_last: 100,
                    ..o()
                },
                vec![1, 2, 3, 4, 5, 6, 7, 8],
                vec![20, 21],
            ),
            // Newest per hour: 7 (02:30) beats 6 (02:00) in the same hour.
            (
                "hourly 2",
                ForgetOptions {
                    keep_hourly: 2,
                    ..o()
                },
                vec![7, 8],
                vec![20, 21],
            ),
            // Newest per day, 4 days: 8 (Feb 2), 7 (Feb 1), 5 (Jan 11), 4 (Jan 5).
            (
                "daily 4",
                ForgetOptions {
                    keep_daily: 4,
                    ..o()
                },
                vec![4, 5, 7, 8],
                vec![20, 21],
            ),
            (
                "daily 5",
                ForgetOptions {
                    keep_daily: 5,
                    ..o()
                },
                vec![3, 4, 5, 7, 8],
                vec![20, 21],
            ),
            // ISO weeks: Feb 2 = 2026-W06, Feb 1 = W05, Jan 11 and Jan 5 = W02, Jan 1 = W01,
            // Dec 31 2025 = 2026-W01 too.
            (
                "weekly 3",
                ForgetOptions {
                    keep_weekly: 3,
                    ..o()
                },
                vec![5, 7, 8],
                vec![20, 21],
            ),
            (
                "weekly 4",
                ForgetOptions {
                    keep_weekly: 4,
                    ..o()
                },
                vec![3, 5, 7, 8],
                vec![20, 21],
            ),
            (
                "monthly 2",
                ForgetOptions {
                    keep_monthly: 2,
                    ..o()
                },
                vec![5, 8],
                vec![20, 21],
            ),
            (
                "monthly 3",
                ForgetOptions {
                    keep_monthly: 3,
                    ..o()
                },
                vec![1, 5, 8],
                vec![20, 21],
            ),
            (
                "yearly 1",
                ForgetOptions {
                    keep_yearly: 1,
                    ..o()
                },
                vec![8],
                vec![21],
            ),
            (
                "yearly 2",
                ForgetOptions {
                    keep_yearly: 2,
                    ..o()
                },
                vec![1, 8],
                vec![21],
            ),
            (
                "tag",
                ForgetOptions {
                    keep_tags: vec!["monthly-audit".into()],
                    ..o()
                },
                vec![3],
                vec![],
            ),
            (
                "last 1 + tag",
                ForgetOptions {
                    keep_last: 1,
                    keep_tags: vec!["monthly-audit".into()],
                    ..o()
                },
                vec![3, 8],
                vec![21],
            ),
            (
                "last 1 + monthly 2",
                ForgetOptions {
                    keep_last: 1,
                    keep_monthly: 2,
                    ..o()
                },
                vec![5, 8],
                vec![20, 21],
            ),
        ];
        for (name, opts, want_a, want_b) in cases {
            let plan = ForgetPlan::new(&series(), &opts).unwrap();
            let k = kept(&plan);
            assert_eq!(k["a"], want_a, "{name}: resource a");
            assert_eq!(k["b"], want_b, "{name}: resource b");
            let total: usize = plan
                .groups
                .iter()
                .map(|g| g.keep.len() + g.remove.len())
                .sum();
            assert_eq!(total, series().len(), "{name}: every snapshot decided once");
        }
    }

    #[test]
    fn reasons_and_order() {
        let opts = ForgetOptions {
            keep_last: 1,
            keep_daily: 2,
            keep_tags: vec!["monthly-audit".into()],
            ..Default::default()
        };
        let plan = ForgetPlan::new(&series(), &opts).unwrap();
        let a = plan.groups.iter().find(|g| g.resource_id == "a").unwrap();
        assert_eq!(a.keep[0].id.as_bytes()[0], 8, "newest first");
        assert_eq!(a.keep[0].reasons, vec!["last", "daily"]);
        assert_eq!(a.keep[1].reasons, vec!["daily"]);
        let tagged = a.keep.iter().find(|s| s.id.as_bytes()[0] == 3).unwrap();
        assert_eq!(tagged.reasons, vec!["tag"]);
        assert!(a.remove.iter().all(|s| s.reasons.is_empty()));
        assert_eq!(a.resource_name, "a@contoso.com");
    }

    /// A newer snapshot of only some item types (`backup --items mail`) does not count as a
    /// newer copy of the whole mailbox: each selection keeps its own last snapshots.
    #[test]
    fn partial_snapshots_are_kept_apart_from_whole_ones() {
        let full = snap(1, "a", "2026-11-01T10:00:00Z", &[]);
        let mut mail_only = snap(2, "a", "2026-11-02T10:00:00Z", &[]);
        mail_only.selection = vec!["mail".into()];
        let older_mail = {
            let mut s = snap(3, "a", "2026-10-30T10:00:00Z", &[]);
            s.selection = vec!["mail".into()];
            s
        };
        let opts = ForgetOptions {
            keep_last: 1,
            ..Default::default()
        };
        let plan = ForgetPlan::new(&[full, mail_only, older_mail], &opts).unwrap();
        assert_eq!(plan.groups.len(), 2, "{plan:#?}");
        let whole = plan.groups.iter().find(|g| g.selection.is_empty()).unwrap();
        assert_eq!(whole.keep.len(), 1);
        assert_eq!(
            whole.keep[0].id.as_bytes()[0],
            1,
            "the only whole snapshot stays"
        );
        let mail = plan
            .groups
            .iter()
            .find(|g| g.selection == ["mail"])
            .unwrap();
        assert_eq!(mail.keep[0].id.as_bytes()[0], 2);
        assert_eq!(plan.to_remove().len(), 1);
        assert_eq!(plan.to_remove()[0].as_bytes()[0], 3);
    }

    #[test]
    fn tag_filter_leaves_other_snapshots_alone() {
        let opts = ForgetOptions {
            keep_last: 1,
            tags: vec!["monthly-audit".into()],
            ..Default::default()
        };
        let plan = ForgetPlan::new(&series(), &opts).unwrap();
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(kept(&plan)["a"], vec![3]);
        assert!(plan.to_remove().is_empty());
    }

    #[test]
    fn empty_policy_is_refused() {
        let err = ForgetPlan::new(&series(), &ForgetOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--keep-last"), "{err}");
        let only_filter = ForgetOptions {
            tags: vec!["x".into()],
            ..Default::default()
        };
        assert!(ForgetPlan::new(&series(), &only_filter).is_err());
    }

    #[test]
    fn same_time_snapshots_are_ordered_by_id() {
        let t = Utc
            .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
            .unwrap()
            .to_rfc3339();
        let list = vec![snap(9, "c", &t, &[]), snap(10, "c", &t, &[])];
        let plan = ForgetPlan::new(
            &list,
            &ForgetOptions {
                keep_last: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(kept(&plan)["c"], vec![10]);
    }
}
