//! Message metadata derived from MIME (RFC 5322) bytes with mail-parser: what Graph's message
//! resource exposes as properties.

use chrono::{DateTime, Utc};
use mail_parser::{Address, HeaderValue, MessageParser, PartType};

/// An `emailAddress` value: `{"name","address"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmailAddress {
    pub name: String,
    pub address: String,
}

/// The Graph message properties that come from the MIME content.
#[derive(Debug, Clone)]
pub(crate) struct MessageMeta {
    pub subject: String,
    pub internet_message_id: Option<String>,
    pub sent: Option<DateTime<Utc>>,
    pub from: Option<EmailAddress>,
    pub sender: Option<EmailAddress>,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub bcc: Vec<EmailAddress>,
    pub reply_to: Vec<EmailAddress>,
    /// `"html"` or `"text"`.
    pub body_type: &'static str,
    pub body: String,
    pub body_preview: String,
    pub has_attachments: bool,
    pub importance: &'static str,
    /// Thread root used to derive `conversationId`.
    pub conversation_key: String,
    pub read_receipt: bool,
}

fn addresses(a: Option<&Address<'_>>) -> Vec<EmailAddress> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .filter_map(|addr| {
            let address = addr.address()?.trim().to_string();
            if address.is_empty() {
                return None;
            }
            let name = addr
                .name()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| address.clone());
            Some(EmailAddress { name, address })
        })
        .collect()
}

fn first_text(v: &HeaderValue<'_>) -> Option<String> {
    match v {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(l) => l.first().map(|t| t.to_string()),
        _ => None,
    }
}

fn collapse_ws(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in s.split_whitespace() {
        for c in (if out.is_empty() { "" } else { " " })
            .chars()
            .chain(word.chars())
        {
            if count == max_chars {
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// Parses MIME bytes. `None` when the bytes are not a message (no header section at all).
pub(crate) fn parse(bytes: &[u8]) -> Option<MessageMeta> {
    let msg = MessageParser::default().parse(bytes)?;
    if msg.headers().is_empty() {
        return None;
    }
    let subject = msg.subject().unwrap_or_default().to_string();
    let internet_message_id = msg.message_id().map(|id| format!("<{id}>"));
    let sent = msg
        .date()
        .and_then(|d| DateTime::<Utc>::from_timestamp(d.to_timestamp(), 0));
    let from = addresses(msg.from()).into_iter().next();
    let sender = addresses(msg.sender())
        .into_iter()
        .next()
        .or_else(|| from.clone());
    let (body_type, body) = match msg.html_bodies().next().map(|p| &p.body) {
        Some(PartType::Html(h)) => ("html", h.to_string()),
        _ => (
            "text",
            msg.body_text(0).map(|t| t.to_string()).unwrap_or_default(),
        ),
    };
    let body_preview = collapse_ws(
        &msg.body_preview(1024)
            .map(|p| p.to_string())
            .unwrap_or_default(),
        255,
    );
    let importance = match msg
        .header_raw("Importance")
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("high") => "high",
        Some("low") => "low",
        _ => match msg.header_raw("X-Priority").map(str::trim) {
            Some(p) if p.starts_with('1') || p.starts_with('2') => "high",
            Some(p) if p.starts_with('4') || p.starts_with('5') => "low",
            _ => "normal",
        },
    };
    let conversation_key = first_text(msg.references())
        .or_else(|| first_text(msg.in_reply_to()))
        .or_else(|| msg.message_id().map(str::to_string))
        .unwrap_or_else(|| subject.clone());
    Some(MessageMeta {
        subject,
        internet_message_id,
        sent,
        from,
        sender,
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        reply_to: addresses(msg.reply_to()),
        body_type,
        body,
        body_preview,
        has_attachments: msg.attachment_count() > 0,
        importance,
        conversation_key,
        read_receipt: msg.header_raw("Disposition-Notification-To").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sample_message() {
        let raw = b"From: Adele Vance <adelev@contoso.com>\r\nTo: Alex <alexw@contoso.com>, bob@contoso.com\r\nSubject: Hello\r\nDate: Mon, 4 Sep 2017 10:00:00 +0000\r\nMessage-ID: <abc@contoso.com>\r\nImportance: High\r\n\r\nThe   group\r\nrepresents Nevada.\r\n";
        let m = parse(raw).unwrap();
        assert_eq!(m.subject, "Hello");
        assert_eq!(m.internet_message_id.as_deref(), Some("<abc@contoso.com>"));
        assert_eq!(m.from.as_ref().unwrap().name, "Adele Vance");
        assert_eq!(m.to.len(), 2);
        assert_eq!(m.to[1].name, "bob@contoso.com");
        assert_eq!(m.body_type, "text");
        assert_eq!(m.body_preview, "The group represents Nevada.");
        assert_eq!(m.importance, "high");
        assert_eq!(m.sent.unwrap().to_rfc3339(), "2017-09-04T10:00:00+00:00");
    }

    #[test]
    fn rejects_headerless_bytes() {
        assert!(parse(b"").is_none());
    }
}
