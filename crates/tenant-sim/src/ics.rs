//! A minimal iCalendar (RFC 5545) reader for seeding events: `VEVENT` components with
//! `UID`, `SUMMARY`, `DESCRIPTION`, `LOCATION`, `DTSTART`, `DTEND`/`DURATION`, `ORGANIZER`,
//! `ATTENDEE`. Times with a `TZID` are read as UTC wall-clock times (no time-zone database);
//! the zone name is kept for `originalStartTimeZone`.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

use crate::mime::EmailAddress;

#[derive(Debug, Clone)]
pub(crate) struct IcsEvent {
    pub uid: Option<String>,
    pub summary: String,
    pub description: String,
    pub location: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub all_day: bool,
    pub time_zone: String,
    pub organizer: Option<EmailAddress>,
    pub attendees: Vec<EmailAddress>,
}

struct Prop {
    name: String,
    params: Vec<(String, String)>,
    value: String,
}

fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(cont) = line.strip_prefix([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push_str(cont);
                continue;
            }
        }
        if !line.is_empty() {
            lines.push(line.to_string());
        }
    }
    lines
}

fn parse_prop(line: &str) -> Option<Prop> {
    // The value starts at the first ':' outside a quoted parameter value.
    let mut in_quote = false;
    let mut split = None;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quote = !in_quote,
            ':' if !in_quote => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let split = split?;
    let (head, value) = (&line[..split], &line[split + 1..]);
    let mut parts = head.split(';');
    let name = parts.next()?.trim().to_ascii_uppercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((
                k.trim().to_ascii_uppercase(),
                v.trim().trim_matches('"').to_string(),
            ))
        })
        .collect();
    Some(Prop {
        name,
        params,
        value: value.to_string(),
    })
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn param<'a>(p: &'a Prop, key: &str) -> Option<&'a str> {
    p.params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// (instant, all-day, tz name)
fn parse_time(p: &Prop) -> Option<(DateTime<Utc>, bool, String)> {
    let v = p.value.trim();
    let tz = param(p, "TZID").unwrap_or("UTC").to_string();
    if param(p, "VALUE") == Some("DATE") || v.len() == 8 {
        let d = NaiveDate::parse_from_str(v, "%Y%m%d").ok()?;
        return Some((d.and_hms_opt(0, 0, 0)?.and_utc(), true, tz));
    }
    let v = v.trim_end_matches('Z');
    let t = NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S").ok()?;
    Some((t.and_utc(), false, tz))
}

/// `PT1H30M`, `P1D`, `P1W` style durations.
fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (neg, v) = match v.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let v = v.strip_prefix('P')?;
    let mut total = Duration::zero();
    let mut num = String::new();
    for c in v.chars() {
        match c {
            '0'..='9' => num.push(c),
            'T' => {}
            unit => {
                let n: i64 = num.parse().ok()?;
                num.clear();
                total += match unit {
                    'W' => Duration::weeks(n),
                    'D' => Duration::days(n),
                    'H' => Duration::hours(n),
                    'M' => Duration::minutes(n),
                    'S' => Duration::seconds(n),
                    _ => return None,
                };
            }
        }
    }
    Some(if neg { -total } else { total })
}

fn address(p: &Prop) -> Option<EmailAddress> {
    let v = p.value.trim();
    let addr = v
        .strip_prefix("mailto:")
        .or_else(|| v.strip_prefix("MAILTO:"))
        .unwrap_or(v)
        .to_string();
    if addr.is_empty() {
        return None;
    }
    let name = param(p, "CN")
        .map(str::to_string)
        .unwrap_or_else(|| addr.clone());
    Some(EmailAddress {
        name,
        address: addr,
    })
}

/// All `VEVENT`s in the text that have a parsable `DTSTART`.
pub(crate) fn parse(text: &str) -> Vec<IcsEvent> {
    let mut events = Vec::new();
    let mut current: Option<Vec<Prop>> = None;
    let mut depth = 0;
    for line in unfold(text) {
        let Some(p) = parse_prop(&line) else { continue };
        match (
            p.name.as_str(),
            p.value.trim().to_ascii_uppercase().as_str(),
        ) {
            ("BEGIN", "VEVENT") => {
                current = Some(Vec::new());
                depth = 0;
            }
            ("BEGIN", _) if current.is_some() => depth += 1,
            ("END", "VEVENT") => {
                if let Some(props) = current.take() {
                    if let Some(e) = build(&props) {
                        events.push(e);
                    }
                }
            }
            ("END", _) if current.is_some() => depth -= 1,
            _ => {
                if depth == 0 {
                    if let Some(props) = current.as_mut() {
                        props.push(p);
                    }
                }
            }
        }
    }
    events
}

fn build(props: &[Prop]) -> Option<IcsEvent> {
    let get = |n: &str| props.iter().find(|p| p.name == n);
    let (start, all_day, tz) = parse_time(get("DTSTART")?)?;
    let end = match get("DTEND").and_then(parse_time) {
        Some((e, _, _)) => e,
        None => match get("DURATION").and_then(|d| parse_duration(&d.value)) {
            Some(d) => start + d,
            None if all_day => start + Duration::days(1),
            None => start + Duration::hours(1),
        },
    };
    Some(IcsEvent {
        uid: get("UID").map(|p| p.value.trim().to_string()),
        summary: get("SUMMARY")
            .map(|p| unescape(&p.value))
            .unwrap_or_default(),
        description: get("DESCRIPTION")
            .map(|p| unescape(&p.value))
            .unwrap_or_default(),
        location: get("LOCATION").map(|p| unescape(&p.value)),
        start,
        end: end.max(start),
        all_day,
        time_zone: tz,
        organizer: get("ORGANIZER").and_then(address),
        attendees: props
            .iter()
            .filter(|p| p.name == "ATTENDEE")
            .filter_map(address)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folded_event_with_attendees() {
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:1@x\r\nSUMMARY:Plan\r\n ning\\, weekly\r\nDTSTART:20240102T100000Z\r\nDURATION:PT1H30M\r\nORGANIZER;CN=\"Booth, Sam\":mailto:sam@x.com\r\nATTENDEE;CN=Dana:mailto:dana@x.com\r\nBEGIN:VALARM\r\nSUMMARY:ignored\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let e = &parse(text)[0];
        assert_eq!(e.summary, "Planning, weekly");
        assert_eq!(e.start.to_rfc3339(), "2024-01-02T10:00:00+00:00");
        assert_eq!(e.end.to_rfc3339(), "2024-01-02T11:30:00+00:00");
        assert_eq!(e.organizer.as_ref().unwrap().name, "Booth, Sam");
        assert_eq!(e.attendees[0].address, "dana@x.com");
    }
}
