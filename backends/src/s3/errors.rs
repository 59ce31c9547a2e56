//! OpenDAL's errors as `StoreError`s: one line naming the store, retryable exactly when the request may succeed
//! later (5xx, 429, timeouts, connections refused or cut), permanent for a wrong key, a missing bucket or a
//! denied request.

use opendal::ErrorKind;

use super::client::BodyTooLong;
use crate::error::StoreError;

/// Longest piece of server text kept in an error: enough for an S3 error code and its message.
const REASON_MAX: usize = 300;

/// The S3 error code and message out of OpenDAL's text (`S3Error { code: "…", message: "…", … }`), or the text.
fn server_words(e: &opendal::Error) -> String {
    let text = e.message();
    let field = |name: &str| {
        let start = text.find(&format!("{name}: \""))? + name.len() + 3;
        let len = text[start..].find('"')?;
        Some(&text[start..start + len])
    };
    let mut words = match (field("code"), field("message")) {
        (Some(c), Some(m)) if !c.is_empty() => format!("{c}: {m}"),
        _ => text.to_string(),
    };
    // The innermost cause says what happened on the wire (refused, reset, timed out, bad certificate).
    let mut source = std::error::Error::source(e);
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    if let Some(r) = root {
        words = format!("{words}: {r}");
    }
    if words.len() > REASON_MAX {
        let mut cut = REASON_MAX;
        while !words.is_char_boundary(cut) {
            cut -= 1;
        }
        words.truncate(cut);
        words.push('…');
    }
    words
}

fn body_too_long(e: &opendal::Error) -> Option<&BodyTooLong> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyTooLong>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

/// `e` from a request to the store shown as `uri` (whose bucket is `bucket`).
pub fn map_error(uri: &str, bucket: &str, e: opendal::Error) -> StoreError {
    let uri = uri.to_string();
    if let Some(b) = body_too_long(&e) {
        return StoreError::Refused {
            uri,
            reason: b.to_string(),
        };
    }
    let words = server_words(&e);
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound { uri },
        ErrorKind::PermissionDenied => StoreError::Auth {
            uri,
            reason: format!(
                "request denied (wrong key, or no permission on bucket {bucket}): {words}"
            ),
        },
        ErrorKind::ConfigInvalid if words.contains("NoSuchBucket") => StoreError::Protocol {
            uri,
            reason: format!("bucket {bucket} does not exist: {words}"),
        },
        ErrorKind::RateLimited => StoreError::Unavailable {
            uri,
            reason: format!("rate limited: {words}"),
        },
        _ if e.is_temporary() => StoreError::Unavailable { uri, reason: words },
        // Signature and region mistakes come back as 400s with these codes.
        _ if [
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AuthorizationHeaderMalformed",
            "InvalidToken",
            "ExpiredToken",
        ]
        .iter()
        .any(|c| words.contains(c)) =>
        {
            StoreError::Auth { uri, reason: words }
        }
        _ => StoreError::Protocol { uri, reason: words },
    }
}
