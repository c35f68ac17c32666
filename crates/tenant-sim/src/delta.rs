//! Delta query state: opaque `$skiptoken`/`$deltatoken`/`token` values and change-feed paging.
//!
//! A token is URL-safe base64 of a small JSON record: which feed (`kind`, `scope` = folder or
//! drive id, plus the calendar-view window), the sequence number the round started from
//! (`base`: changes after it are reported; 0 = initial sync) and the sequence number when the
//! round began (`high`: the next round's `base`), and for `nextLink`s the position reached.
//!
//! Feed entries are ordered by [`Cursor`]: removals first (phase 0, by sequence number), then
//! live items (phase 1) by sequence number (Exchange) or by path (OneDrive, so folders come
//! before their contents). An item changed while a round is being paged simply shows up again
//! in the next round, which Graph's delta contract allows.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Position in a change feed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub phase: u8,
    pub seq: u64,
    pub key: String,
}

/// The state carried by a delta token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct DeltaState {
    #[serde(rename = "k")]
    pub kind: String,
    #[serde(rename = "s")]
    pub scope: String,
    #[serde(rename = "b")]
    pub base: u64,
    #[serde(rename = "h")]
    pub high: u64,
    /// `Some` in a `nextLink` token: the last entry already returned.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Cursor>,
    /// `true` in a `deltaLink` token.
    #[serde(rename = "f", default)]
    pub complete: bool,
    /// calendarView window (startDateTime, endDateTime) as given on the first request.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub window: Option<(String, String)>,
}

impl DeltaState {
    pub(crate) fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub(crate) fn decode(token: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim().trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The state for the page to serve: a fresh initial round, the continuation of a round,
    /// or (from a deltaLink token) a new round starting where the old one ended.
    pub(crate) fn resume(self, current_seq: u64) -> Self {
        if self.complete {
            DeltaState {
                base: self.high,
                high: current_seq,
                after: None,
                complete: false,
                ..self
            }
        } else {
            self
        }
    }

    pub(crate) fn next_page(&self, after: Cursor) -> Self {
        DeltaState {
            after: Some(after),
            complete: false,
            ..self.clone()
        }
    }

    pub(crate) fn finished(&self) -> Self {
        DeltaState {
            base: self.high,
            after: None,
            complete: true,
            ..self.clone()
        }
    }
}

/// One page of a feed: the items, and the cursor to continue from when more remain.
pub(crate) struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// Sorts the entries and returns up to `size` of those after `after`.
pub(crate) fn page<T>(
    mut entries: Vec<(Cursor, T)>,
    after: Option<&Cursor>,
    size: usize,
) -> Page<T> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rest = entries
        .into_iter()
        .filter(|(c, _)| after.is_none_or(|a| c > a))
        .peekable();
    let mut items = Vec::new();
    let mut last = None;
    while items.len() < size {
        let Some((c, item)) = rest.next() else { break };
        last = Some(c);
        items.push(item);
    }
    let next = if rest.peek().is_some() { last } else { None };
    Page { items, next }
}

/// `odata.maxpagesize` from the `Prefer` header(s), if any.
pub(crate) fn prefer_max_page_size(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| {
            let (k, v) = pref.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("odata.maxpagesize") {
                v.trim().trim_matches('"').parse().ok()
            } else {
                None
            }
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(phase: u8, seq: u64, key: &str) -> Cursor {
        Cursor {
            phase,
            seq,
            key: key.into(),
        }
    }

    #[test]
    fn pages_continue_after_cursor() {
        let entries = vec![
            (c(1, 3, "c"), 3),
            (c(0, 9, "x"), 0),
            (c(1, 1, "a"), 1),
            (c(1, 2, "b"), 2),
        ];
        let p1 = page(entries.clone(), None, 2);
        assert_eq!(p1.items, vec![0, 1]);
        let p2 = page(entries.clone(), p1.next.as_ref(), 2);
        assert_eq!(p2.items, vec![2, 3]);
        assert!(p2.next.is_none());
    }

    #[test]
    fn token_round_trip_and_garbage() {
        let s = DeltaState {
            kind: "mail".into(),
            scope: "AQMk=".into(),
            base: 0,
            high: 7,
            after: Some(c(1, 2, "id")),
            complete: false,
            window: None,
        };
        assert_eq!(DeltaState::decode(&s.encode()), Some(s.clone()));
        assert_eq!(DeltaState::decode("not-a-token"), None);
        let resumed = s.finished().resume(12);
        assert_eq!((resumed.base, resumed.high, resumed.after), (7, 12, None));
    }
}
