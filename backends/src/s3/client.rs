//! How an S3 store reaches its server: the credentials (environment or a private file), the HTTP client (the
//! workspace's rustls with aws-lc-rs, no redirects, bounded connect and read times) and the one guard OpenDAL
//! lacks: every response body is bounded before it is buffered.
//!
//! OpenDAL buffers error replies and listing pages whole, and a server (or a man in the middle of plain HTTP) may
//! ignore a `Range` header and stream gigabytes. `BoundedFetch` therefore caps each body at what the request can
//! legitimately bring back — the length of the byte range asked for, a listing page's worth, or a short error
//! document — and refuses a declared `Content-Length` over the cap before reading a byte of it.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use opendal::raw::{HttpBody, HttpClient, HttpFetch};
use opendal::{Buffer, Error, ErrorKind};

use crate::error::{Result, StoreError};
use crate::secret::exposure;
use crate::tls::{TlsClient, install_provider};
use crate::uri::S3Uri;

/// A dead or unreachable endpoint must answer `Unavailable` in seconds (callers retry and mark the store down).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest silence while waiting for a reply or its next bytes: a stalled server is `Unavailable`, not a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body of a non-ranged GET (a listing page of 1,000 keys is about 300 KB).
const LIST_BODY_MAX: u64 = 16 << 20;
/// Largest body of any other reply (error documents, PUT and DELETE answers).
const SMALL_BODY_MAX: u64 = 1 << 20;

/// An access key pair (and session token, for temporary credentials).
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    /// From `uri`'s credentials file, or else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN`). Errors say where they looked, never what they found.
    pub fn load(uri: &S3Uri) -> std::result::Result<Credentials, String> {
        match &uri.credentials_file {
            Some(path) => read_credentials_file(path, uri.profile.as_deref()),
            None => {
                let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                        access_key_id,
                        secret_access_key,
                        session_token: var("AWS_SESSION_TOKEN"),
                    }),
                    _ => Err(
                        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add \
                              credentials-file=PATH to the store URI"
                            .into(),
                    ),
                }
            }
        }
    }
}

/// A `[name]` section of a credentials file (`None`: lines before any section) and its `key = value` lines.
type Section = (Option<String>, Vec<(String, String)>);

/// An AWS shared-credentials file (`[profile]` sections of `aws_access_key_id = …` lines), which must be private
/// like the volume's key file. Without `profile`: the `default` section, or the only one, or the lines before
/// any section.
pub fn read_credentials_file(
    path: &Path,
    profile: Option<&str>,
) -> std::result::Result<Credentials, String> {
    let shown = path.display();
    let problem = |e: std::io::Error| format!("cannot read credentials file {shown}: {e}");
    if let Some(why) = exposure(path).map_err(problem)? {
        return Err(format!("credentials file {shown}: {why}"));
    }
    let text = std::fs::read_to_string(path).map_err(problem)?;
    let mut sections: Vec<Section> = vec![(None, Vec::new())];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().trim_start_matches("profile ").trim();
            sections.push((Some(name.to_string()), Vec::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            let entry = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            sections.last_mut().expect("starts with one").1.push(entry);
        } else {
            return Err(format!(
                "credentials file {shown}: a line is neither [section] nor key = value"
            ));
        }
    }
    sections.retain(|(_, kv)| !kv.is_empty());
    let chosen = match profile {
        Some(p) => sections.iter().find(|(n, _)| n.as_deref() == Some(p)),
        None => sections
            .iter()
            .find(|(n, _)| n.as_deref() == Some("default"))
            .or(if sections.len() == 1 {
                sections.first()
            } else {
                None
            }),
    };
    let Some((_, kv)) = chosen else {
        return Err(match profile {
            Some(p) => format!("credentials file {shown} has no [{p}] section"),
            None => format!(
                "credentials file {shown}: several sections and no [default]: add profile=NAME to the URI"
            ),
        });
    };
    let get = |k: &str| {
        kv.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key))
            if !access_key_id.is_empty() && !secret_access_key.is_empty() =>
        {
            Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: get("aws_session_token").filter(|t| !t.is_empty()),
            })
        }
        _ => Err(format!(
            "credentials file {shown} lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}

/// The HTTP client for one store: TLS from `uri`'s `ca-file` (or the system's CAs), bodies bounded.
pub fn http_client(uri: &S3Uri, shown: &str) -> Result<HttpClient> {
    // OpenDAL builds a fallback client of its own while it is set up; with no TLS provider compiled into reqwest
    // that one needs the process default.
    install_provider();
    let tls = TlsClient::new(shown, uri.ca_file.as_deref())?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls.client_config()).clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        // A signed request must not be replayed at another host; S3's region redirects come without a Location.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StoreError::InvalidUri {
            uri: shown.to_string(),
            reason: format!("HTTP client: {e}"),
        })?;
    Ok(HttpClient::with(BoundedFetch { client }))
}

/// A reply body longer than its request allows; found in an OpenDAL error's source chain by `errors`.
#[derive(Debug)]
pub struct BodyTooLong {
    pub limit: u64,
    pub declared: Option<u64>,
}

impl std::fmt::Display for BodyTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.declared {
            Some(d) => write!(
                f,
                "reply of {d} bytes where at most {} can be due",
                self.limit
            ),
            None => write!(
                f,
                "reply longer than the {} bytes that can be due",
                self.limit
            ),
        }
    }
}

impl std::error::Error for BodyTooLong {}

fn too_long(limit: u64, declared: Option<u64>) -> Error {
    Error::new(ErrorKind::Unexpected, "reply body over its bound")
        .set_source(BodyTooLong { limit, declared })
}

/// reqwest, with every reply body bounded (see the module docs).
struct BoundedFetch {
    client: reqwest::Client,
}

/// How many body bytes a reply to `req` may carry when it succeeds.
fn body_bound(req: &http::Request<Buffer>) -> u64 {
    if req.method() != http::Method::GET {
        return SMALL_BODY_MAX;
    }
    // Our object reads always ask for `bytes=FIRST-LAST`.
    let range = req
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match range {
        Some((first, last)) if last >= first => last - first + 1,
        _ => LIST_BODY_MAX,
    }
}

impl HttpFetch for BoundedFetch {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let ok_bound = body_bound(&req);
        // A HEAD reply's Content-Length is the object's, and it has no body (hyper reads none).
        let head = req.method() == http::Method::HEAD;
        let resp = HttpFetch::fetch(&self.client, req).await?;
        if head {
            return Ok(resp);
        }
        let bound = if resp.status().is_success() {
            ok_bound
        } else {
            SMALL_BODY_MAX
        };
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|d| d > bound) {
            return Err(too_long(bound, declared));
        }
        Ok(resp.map(|body| {
            body.map_inner(|inner| {
                Box::new(Bounded {
                    inner,
                    left: bound,
                    bound,
                })
            })
        }))
    }
}

type BodyStream = Box<dyn Stream<Item = opendal::Result<Buffer>> + Send + Sync + Unpin + 'static>;

/// A body stream that fails once more than `bound` bytes have come.
struct Bounded {
    inner: BodyStream,
    left: u64,
    bound: u64,
}

impl Stream for Bounded {
    type Item = opendal::Result<Buffer>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(buf))) => {
                let n = buf.len() as u64;
                if n > self.left {
                    self.left = 0;
                    return Poll::Ready(Some(Err(too_long(self.bound, None))));
                }
                self.left -= n;
                Poll::Ready(Some(Ok(buf)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_files_pick_the_right_section_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key = S1\n\n\
             [profile backup]\naws_access_key_id=AK2\naws_secret_access_key=S2\naws_session_token = T2\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_credentials_file(&p, None).err().unwrap();
        assert!(e.contains("chmod 600") && !e.contains("S1"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = read_credentials_file(&p, None).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK1", "S1")
        );
        assert!(c.session_token.is_none());
        let c = read_credentials_file(&p, Some("backup")).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("AK2", Some("T2"))
        );
        let e = read_credentials_file(&p, Some("nope")).err().unwrap();
        assert!(e.contains("[nope]"), "{e}");
        // One anonymous section is enough; a broken line is named without its content.
        std::fs::write(&p, "aws_access_key_id = A\naws_secret_access_key = B\n").unwrap();
        assert_eq!(read_credentials_file(&p, None).unwrap().access_key_id, "A");
        std::fs::write(&p, "aws_secret_access_key B-is-secret\n").unwrap();
        let e = read_credentials_file(&p, None).err().unwrap();
        assert!(!e.contains("B-is-secret"), "{e}");
    }
}
