//! The delta walker: pages of changes, then the deltaLink to store for next time.
//!
//! Implements <https://learn.microsoft.com/graph/delta-query-overview>.

use serde_json::Value;

use reqwest::header::LOCATION;

use crate::client::{api_error, refetch_broken_json, GraphClient};
use crate::error::{Error, Result};
use crate::retry::header_str;

/// Where a delta walk starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaStart {
    /// A first, full enumeration: a delta path relative to the Graph base, sent as given
    /// (`/users/{id}/mailFolders/{f}/messages/delta` or `/drives/{d}/root/delta()`).
    Initial(String),
    /// A stored `@odata.deltaLink` (or an `@odata.nextLink` of an interrupted walk), absolute,
    /// with the Graph base's origin.
    Resume(String),
}

/// One page of a delta walk.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaPage {
    /// The page's `value` items as Graph sent them; see [`is_removed`].
    pub items: Vec<Value>,
    /// `@odata.nextLink`: more pages follow.
    pub next_link: Option<String>,
    /// `@odata.deltaLink`: the walk is complete; store it to resume from.
    pub delta_link: Option<String>,
}

/// Where a delta walk saves its pages as it goes, so a killed backup resumes from the last
/// page instead of from the start.
///
/// # Contract
/// [`DeltaJournal::append`] is atomic (a page is saved whole or not at all) and durable when it
/// returns; [`DeltaJournal::load`] returns the pages appended for `collection` since the last
/// [`DeltaJournal::discard`], in order. The owner discards a collection's pages once the
/// snapshot built from them is committed.
pub trait DeltaJournal: Send + Sync + std::fmt::Debug {
    /// The saved pages of `collection`, oldest first, each with the link its walk began at.
    ///
    /// # Errors
    /// Storage failures, as [`Error::Journal`].
    fn load(&self, collection: &str) -> Result<Vec<(String, DeltaPage)>>;
    /// Saves page number `seq` (from 0) of the walk of `collection` that began at `start`.
    ///
    /// # Errors
    /// Storage failures, as [`Error::Journal`].
    fn append(&self, collection: &str, start: &str, seq: u64, page: &DeltaPage) -> Result<()>;
    /// Forgets the pages of `collection`.
    ///
    /// # Errors
    /// Storage failures, as [`Error::Journal`].
    fn discard(&self, collection: &str) -> Result<()>;
}

/// A walker's journal and what it replays.
#[derive(Debug, Clone)]
struct Journaled {
    journal: std::sync::Arc<dyn DeltaJournal>,
    collection: String,
    /// The link this walk began at (pages saved under another start are stale).
    start: String,
    /// Saved pages still to hand out before fetching more.
    replay: std::collections::VecDeque<DeltaPage>,
    /// Pages seen so far in this walk (replayed and fetched).
    seq: u64,
}

/// Walks a delta query page by page.
///
/// Every page is fetched with a fresh token, the configured headers and
/// `Prefer: odata.maxpagesize=N`, and is retried on its own (a truncated page too). After an
/// error the walker keeps its position: calling [`DeltaWalker::next_page`] again retries the
/// same page. After a lost sync state, [`DeltaWalker::restart`] begins a full enumeration.
#[derive(Debug, Clone)]
pub struct DeltaWalker {
    client: GraphClient,
    next: Option<String>,
    page_size: Option<u32>,
    /// The `Location` of the last 410 answer: where Microsoft says to restart.
    restart_at: Option<String>,
    journal: Option<Box<Journaled>>,
}

impl GraphClient {
    /// Starts a delta walk; nothing is sent until [`DeltaWalker::next_page`].
    pub fn delta(&self, start: DeltaStart, page_size: Option<u32>) -> DeltaWalker {
        let next = match start {
            DeltaStart::Initial(path) | DeltaStart::Resume(path) => path,
        };
        DeltaWalker {
            client: self.clone(),
            next: Some(next),
            page_size,
            restart_at: None,
            journal: None,
        }
    }
}

impl DeltaWalker {
    /// Saves every page in `journal` under `collection` (a stable name of the delta
    /// collection, e.g. `drive:{drive id}`) and, when the journal holds pages of an earlier,
    /// interrupted walk that began at the same link, hands those out first and then continues
    /// from the last saved `@odata.nextLink` — or, when the saved walk reached its deltaLink,
    /// sends nothing at all. Pages saved under another start link are discarded.
    ///
    /// The pages' pre-authenticated download URLs (`@microsoft.graph.downloadUrl`,
    /// `@content.downloadUrl`) are bearer credentials and are not saved.
    ///
    /// # Errors
    /// [`Error::Journal`] when the journal cannot be read or cleaned.
    pub fn with_journal(
        mut self,
        journal: std::sync::Arc<dyn DeltaJournal>,
        collection: impl Into<String>,
    ) -> Result<Self> {
        let collection = collection.into();
        let start = self.next.clone().unwrap_or_default();
        let saved = journal.load(&collection)?;
        let mut replay = std::collections::VecDeque::new();
        if saved.iter().all(|(s, _)| *s == start) {
            replay.extend(saved.into_iter().map(|(_, p)| p));
        } else {
            tracing::info!(%collection, "saved delta pages belong to another walk: discarded");
            journal.discard(&collection)?;
        }
        if let Some(last) = replay.back() {
            tracing::info!(
                %collection,
                pages = replay.len(),
                "resuming an interrupted delta walk from its last saved page"
            );
            // Continue after the last saved page; a saved deltaLink page ends the walk.
            self.next = last.next_link.clone();
        }
        self.journal = Some(Box::new(Journaled {
            journal,
            collection,
            start,
            replay,
            seq: 0,
        }));
        Ok(self)
    }

    /// The next page, or `None` once the page carrying `@odata.deltaLink` has been returned.
    ///
    /// # Errors
    /// As [`GraphClient::get_json`]; a 410 or `SyncStateNotFound`-style answer means the delta
    /// token expired ([`Error::is_resync_required`]); [`Error::Decode`] for a page without
    /// `value`; [`Error::Protocol`] for a page with neither nextLink nor deltaLink.
    pub async fn next_page(&mut self) -> Result<Option<DeltaPage>> {
        if let Some(j) = self.journal.as_mut() {
            if let Some(page) = j.replay.pop_front() {
                j.seq += 1;
                return Ok(Some(page));
            }
        }
        let Some(url) = self.next.clone() else {
            return Ok(None);
        };
        let headers = self.client.page_headers(self.page_size);
        let mut page: Value = {
            let mut req = crate::client::Req::new(reqwest::Method::GET, self.client.resolve(&url)?);
            req.headers = headers;
            req.timeout = Some(self.client.shared.http.options().request_timeout);
            let req = &req;
            let client = &self.client;
            let restart_at = std::sync::Mutex::new(None);
            let restart_ref = &restart_at;
            let fetched = refetch_broken_json(
                &client.shared.http.options().retry,
                &req.shown,
                || async move {
                    let resp = client.send_buffered_any(req).await?;
                    if (200..300).contains(&resp.status) {
                        return Ok(resp.body);
                    }
                    if resp.status == 410 {
                        *restart_ref.lock().unwrap_or_else(|p| p.into_inner()) =
                            header_str(&resp.headers, LOCATION.as_str()).map(str::to_owned);
                    }
                    Err(api_error(
                        req.method.as_str(),
                        &req.shown,
                        resp.status,
                        &resp.headers,
                        &resp.body,
                    ))
                },
            )
            .await;
            self.restart_at = restart_at.into_inner().unwrap_or_else(|p| p.into_inner());
            fetched?
        };
        let shown = crate::http::display_url(&self.client.resolve(&url)?);
        let items = match page.get_mut("value").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(Error::Decode {
                    url: shown,
                    detail: "delta page has no \"value\" array".into(),
                })
            }
        };
        let link = |name: &str| page.get(name).and_then(Value::as_str).map(str::to_owned);
        let next_link = link("@odata.nextLink");
        let delta_link = link("@odata.deltaLink");
        match (&next_link, &delta_link) {
            (Some(next), _) => {
                if *next == url {
                    return Err(Error::Protocol {
                        url: shown,
                        detail: "@odata.nextLink points at the same page".into(),
                    });
                }
                self.next = Some(next.clone());
            }
            (None, Some(_)) => self.next = None,
            (None, None) => {
                return Err(Error::Protocol {
                    url: shown,
                    detail: "delta page has neither @odata.nextLink nor @odata.deltaLink".into(),
                })
            }
        }
        let page = DeltaPage {
            items,
            next_link,
            delta_link,
        };
        if let Some(j) = self.journal.as_mut() {
            let mut saved = page.clone();
            for item in &mut saved.items {
                if let Value::Object(map) = item {
                    map.remove("@microsoft.graph.downloadUrl");
                    map.remove("@content.downloadUrl");
                }
            }
            j.journal.append(&j.collection, &j.start, j.seq, &saved)?;
            j.seq += 1;
        }
        Ok(Some(page))
    }

    /// Starts a full enumeration again after a lost sync state (410 Gone, `resyncRequired`,
    /// `SyncStateNotFound`, ...): from the `Location` Microsoft sent with the 410 when it is a
    /// URL under the Graph base, else from `initial` (the collection's delta path, as for
    /// [`DeltaStart::Initial`]). The caller must drop what it collected from this walk.
    ///
    /// See <https://learn.microsoft.com/graph/delta-query-overview#synchronization-reset> and
    /// <https://learn.microsoft.com/graph/api/driveitem-delta>.
    pub fn restart(&mut self, initial: &str) {
        if let Some(j) = self.journal.as_mut() {
            // The saved pages are of the lost walk; the new walk is saved under its own start.
            if let Err(e) = j.journal.discard(&j.collection) {
                tracing::warn!(collection = %j.collection, error = %e, "cannot discard saved delta pages");
            }
            j.replay.clear();
            j.seq = 0;
        }
        let location = self
            .restart_at
            .take()
            .filter(|l| self.client.resolve(l).is_ok());
        if let Some(l) = &location {
            tracing::info!(location = %l, "restarting the delta enumeration where Microsoft said");
        }
        self.next = Some(location.unwrap_or_else(|| initial.to_owned()));
        if let Some(j) = self.journal.as_mut() {
            j.start = self.next.clone().unwrap_or_default();
        }
    }

    /// The link the next call will fetch (`None` when done): store it to resume an
    /// interrupted walk with [`DeltaStart::Resume`].
    pub fn position(&self) -> Option<&str> {
        self.next.as_deref()
    }
}

/// True for a delta item that reports a deletion: an `@removed` annotation (Outlook,
/// directory objects) or a `deleted` facet (driveItem).
pub fn is_removed(item: &Value) -> bool {
    item.get("@removed").is_some() || item.get("deleted").is_some_and(|d| !d.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory journal: collection → (start, page) list.
    #[derive(Debug, Default)]
    struct MemJournal(
        std::sync::Mutex<std::collections::HashMap<String, Vec<(String, DeltaPage)>>>,
    );

    impl DeltaJournal for MemJournal {
        fn load(&self, collection: &str) -> Result<Vec<(String, DeltaPage)>> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(collection)
                .cloned()
                .unwrap_or_default())
        }
        fn append(&self, collection: &str, start: &str, seq: u64, page: &DeltaPage) -> Result<()> {
            let mut m = self.0.lock().unwrap();
            let v = m.entry(collection.to_owned()).or_default();
            v.truncate(seq as usize);
            v.push((start.to_owned(), page.clone()));
            Ok(())
        }
        fn discard(&self, collection: &str) -> Result<()> {
            self.0.lock().unwrap().remove(collection);
            Ok(())
        }
    }

    /// A client whose every request would fail (nothing listens on port 9 of 127.0.0.1): the
    /// replay must not send any.
    fn offline_client() -> GraphClient {
        let http = crate::HttpClient::new(crate::HttpOptions::default()).unwrap();
        let base = url::Url::parse("http://127.0.0.1:9/v1.0/").unwrap();
        let endpoints = crate::Endpoints {
            authority: url::Url::parse("http://127.0.0.1:9").unwrap(),
            graph_base: base.clone(),
        };
        let credential = crate::ClientSecretCredential {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret: "s".into(),
        };
        let tokens = std::sync::Arc::new(crate::TokenProvider::new(
            http.clone(),
            endpoints,
            credential,
        ));
        GraphClient::new(http, tokens, base)
    }

    fn page(ids: &[&str], next: Option<&str>, delta: Option<&str>) -> DeltaPage {
        DeltaPage {
            items: ids.iter().map(|i| serde_json::json!({"id": i})).collect(),
            next_link: next.map(str::to_owned),
            delta_link: delta.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn a_completed_saved_walk_is_replayed_without_requests() {
        let journal = std::sync::Arc::new(MemJournal::default());
        journal
            .append(
                "c",
                "/x/delta",
                0,
                &page(
                    &["1", "2"],
                    Some("http://127.0.0.1:9/v1.0/x/delta?p=2"),
                    None,
                ),
            )
            .unwrap();
        journal
            .append(
                "c",
                "/x/delta",
                1,
                &page(&["3"], None, Some("http://127.0.0.1:9/v1.0/x/delta?d=1")),
            )
            .unwrap();
        let mut walker = offline_client()
            .delta(DeltaStart::Initial("/x/delta".into()), Some(2))
            .with_journal(journal.clone(), "c")
            .unwrap();
        let first = walker.next_page().await.unwrap().unwrap();
        assert_eq!(first.items.len(), 2);
        let second = walker.next_page().await.unwrap().unwrap();
        assert_eq!(
            second.delta_link.as_deref(),
            Some("http://127.0.0.1:9/v1.0/x/delta?d=1")
        );
        assert!(
            walker.next_page().await.unwrap().is_none(),
            "nothing fetched"
        );
    }

    #[tokio::test]
    async fn pages_of_another_walk_are_discarded_and_a_partial_walk_continues_from_its_next_link() {
        let journal = std::sync::Arc::new(MemJournal::default());
        journal
            .append(
                "c",
                "/old/delta",
                0,
                &page(&["1"], Some("http://127.0.0.1:9/v1.0/old?p=2"), None),
            )
            .unwrap();
        let walker = offline_client()
            .delta(
                DeltaStart::Resume("http://127.0.0.1:9/v1.0/x/delta?d=9".into()),
                None,
            )
            .with_journal(journal.clone(), "c")
            .unwrap();
        assert!(
            journal.load("c").unwrap().is_empty(),
            "stale pages discarded"
        );
        assert_eq!(
            walker.position(),
            Some("http://127.0.0.1:9/v1.0/x/delta?d=9")
        );

        journal
            .append(
                "c",
                "/x/delta",
                0,
                &page(&["1"], Some("http://127.0.0.1:9/v1.0/x?p=2"), None),
            )
            .unwrap();
        let mut walker = offline_client()
            .delta(DeltaStart::Initial("/x/delta".into()), None)
            .with_journal(journal.clone(), "c")
            .unwrap();
        assert_eq!(walker.next_page().await.unwrap().unwrap().items.len(), 1);
        assert_eq!(
            walker.position(),
            Some("http://127.0.0.1:9/v1.0/x?p=2"),
            "continues after the saved page"
        );
        walker.restart("/x/delta");
        assert!(
            journal.load("c").unwrap().is_empty(),
            "a restart drops the lost walk's pages"
        );
    }

    #[test]
    fn removed_items() {
        assert!(is_removed(
            &serde_json::json!({"id": "1", "@removed": {"reason": "deleted"}})
        ));
        assert!(is_removed(
            &serde_json::json!({"id": "1", "deleted": {"state": "deleted"}})
        ));
        assert!(!is_removed(&serde_json::json!({"id": "1", "name": "a"})));
    }
}
