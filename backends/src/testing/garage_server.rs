//! `GarageServer`: a real Garage (self-hosted S3 server) cluster for tests, on free loopback ports, stopped on drop.
//!
//! One node (replication factor 1) for the store's own tests, or three processes with replication factor 3 for
//! tests that kill a node under load. Each node gets a generated `garage.toml` (sqlite metadata, its own data and
//! metadata directories, a shared random `rpc_secret`); the harness assigns the layout and applies it, imports a
//! random access key and creates buckets, all through Garage's own CLI, as an operator would.
//!
//! The binary is `garage` on PATH, else `~/.cargo/bin/garage` (`$QSFS_GARAGE` overrides both). Tests need only
//! `cargo install --locked garage --no-default-features --features bundled-libs,sqlite`.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to answer, and the layout to settle.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The region Garage is configured with (it checks the signature's region).
pub const GARAGE_REGION: &str = "garage";

#[derive(Debug)]
struct Node {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    s3_port: u16,
}

/// A running Garage cluster; every node is killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct GarageServer {
    nodes: Vec<Node>,
    key_id: String,
    secret: String,
    // Owns the temp dir so it lives as long as the cluster (and is removed after it).
    dir: tempfile::TempDir,
}

/// The `garage` binary to run.
pub fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QSFS_GARAGE") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("garage"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin/garage")
    })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl GarageServer {
    /// One node, replication factor 1.
    pub fn start() -> io::Result<GarageServer> {
        GarageServer::start_nodes(1)
    }

    /// `n` nodes on loopback with replication factor `n` (each object on every node; writes and reads need a
    /// quorum, so one node of three may die without a request failing).
    pub fn start_nodes(n: usize) -> io::Result<GarageServer> {
        let dir = tempfile::Builder::new().prefix("qsfs-garage-").tempdir()?;
        let secret = random_hex(32);
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(write_config(dir.path(), i, n, &secret)?);
        }
        let mut server = GarageServer {
            nodes,
            key_id: format!("GK{}", random_hex(12)),
            secret: random_hex(32),
            dir,
        };
        for i in 0..n {
            server.spawn(i)?;
        }
        server.form_cluster()?;
        let creds = format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.key_id, server.secret
        );
        let path = server.credentials_file();
        std::fs::write(&path, creds)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let (id, secret) = (server.key_id.clone(), server.secret.clone());
        server.cli(0, &["key", "import", "--yes", "-n", "qsfs", &id, &secret])?;
        Ok(server)
    }

    /// Connects the nodes, gives each a role and applies the layout; returns once the cluster is healthy.
    fn form_cluster(&self) -> io::Result<()> {
        let ids: Vec<String> = (0..self.nodes.len())
            .map(|i| Ok(self.cli(i, &["node", "id", "-q"])?.trim().to_string()))
            .collect::<io::Result<_>>()?;
        for full in &ids[1..] {
            self.retry(|| self.cli(0, &["node", "connect", full]))?;
        }
        for (i, full) in ids.iter().enumerate() {
            let short = full.split('@').next().unwrap_or(full);
            let zone = format!("z{i}");
            self.retry(|| self.cli(0, &["layout", "assign", "-z", &zone, "-c", "1G", short]))?;
        }
        self.retry(|| self.cli(0, &["layout", "apply", "--version", "1"]))?;
        Ok(())
    }

    /// Retries a CLI step while the cluster settles (peers connecting, layout propagating).
    fn retry<T>(&self, mut step: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match step() {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs `garage -c <node i's config> ARGS`, failing with its output.
    pub fn cli(&self, node: usize, args: &[&str]) -> io::Result<String> {
        let out = Command::new(garage_binary())
            .arg("-c")
            .arg(&self.nodes[node].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run garage: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "garage {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Creates `bucket` (3-63 lowercase letters, digits, '-') and lets the test key read and write it.
    pub fn create_bucket(&self, bucket: &str) -> io::Result<()> {
        self.retry(|| self.cli(0, &["bucket", "create", bucket]))?;
        self.cli(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "qsfs",
            ],
        )?;
        Ok(())
    }

    /// The S3 endpoint of node `node`.
    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    pub fn s3_port(&self, node: usize) -> u16 {
        self.nodes[node].s3_port
    }

    /// A private file (mode 600) with the test key in AWS shared-credentials format.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    pub fn access_key(&self) -> (&str, &str) {
        (&self.key_id, &self.secret)
    }

    /// The store URI of `bucket` (optionally under `/prefix`) through node 0.
    pub fn uri(&self, bucket_and_prefix: &str) -> String {
        self.uri_via(bucket_and_prefix, &self.endpoint(0))
    }

    /// The store URI of `bucket[/prefix]` at `endpoint` (a proxy in front of a node, say).
    pub fn uri_via(&self, bucket_and_prefix: &str, endpoint: &str) -> String {
        format!(
            "s3://{bucket_and_prefix}?endpoint={endpoint}&region={GARAGE_REGION}&credentials-file={}",
            self.credentials_file().display()
        )
    }

    /// Kills node `node` with SIGKILL (a crash) and reaps it.
    pub fn kill_node(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `node` again on its ports and directories (after `kill_node`).
    pub fn restart_node(&mut self, node: usize) -> io::Result<()> {
        self.kill_node(node);
        self.spawn(node)
    }

    /// S3 requests the running nodes served so far, by kind (`PutObject`, `UploadPart`, `GetObject`,
    /// `ListObjects`, `HeadObject`, `DeleteObject`, `Other`), from the nodes' request logs.
    pub fn s3_requests(&self) -> io::Result<BTreeMap<String, u64>> {
        let mut total = BTreeMap::new();
        for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()) {
            for (kind, n) in self.s3_requests_on(i)? {
                *total.entry(kind).or_insert(0) += n;
            }
        }
        Ok(total)
    }

    /// S3 requests node `node` served so far, by kind. Counted from its log, where Garage writes one line per
    /// request (`… (key GK…) METHOD /bucket/key?query`): the metrics endpoint needs a Garage built with its
    /// `metrics` feature, which the test install leaves out to keep the build short.
    pub fn s3_requests_on(&self, node: usize) -> io::Result<BTreeMap<String, u64>> {
        let mut total = BTreeMap::new();
        let log = std::fs::read_to_string(&self.nodes[node].log)?;
        for line in log.lines().filter(|l| !l.contains("in response to")) {
            let Some(request) = line
                .split_once("(key ")
                .and_then(|(_, r)| r.split_once(") "))
            else {
                continue;
            };
            if let Some(kind) = request_kind(request.1) {
                *total.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
        Ok(total)
    }

    /// Node `node`'s log (for failure messages).
    pub fn log_tail(&self, node: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[node].log).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut child = Command::new(garage_binary())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            // One INFO line per S3 request: what `s3_requests` counts.
            .env("RUST_LOG", "garage=warn,garage_api_common=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run {} ({e}): install it with `cargo install --locked garage --no-default-features --features bundled-libs,sqlite`",
                        garage_binary().display()
                    ),
                )
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !answers(node.s3_port) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(io::Error::other(format!(
                    "garage exited at start ({status})"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "garage did not start in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        node.child = Some(child);
        Ok(())
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// Writes node `i`'s configuration (of `n` nodes) and picks its ports.
fn write_config(dir: &Path, i: usize, n: usize, secret: &str) -> io::Result<Node> {
    let home = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&home)?;
    let (rpc, s3, admin) = (free_port()?, free_port()?, free_port()?);
    let config = home.join("garage.toml");
    let text = format!(
        r#"metadata_dir = "{home}/meta"
data_dir = "{home}/data"
db_engine = "sqlite"
replication_factor = {n}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{admin_token}"
"#,
        home = home.display(),
        admin_token = random_hex(16),
    );
    std::fs::write(&config, text)?;
    // Garage refuses a configuration holding the rpc secret that others can read.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
    Ok(Node {
        child: None,
        config,
        log: home.join("garage.log"),
        s3_port: s3,
    })
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// The S3 API call a logged `METHOD /bucket[/key][?query]` was; `None` for a line that is not a request.
fn request_kind(request: &str) -> Option<&'static str> {
    let (method, target) = request.trim().split_once(' ')?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let object = path.trim_start_matches('/').contains('/');
    Some(match method {
        "PUT" if query.contains("partNumber=") => "UploadPart",
        "PUT" if object => "PutObject",
        "GET" if object => "GetObject",
        "GET" if query.contains("list-type") || query.is_empty() || query.contains("prefix") => {
            "ListObjects"
        }
        "HEAD" if object => "HeadObject",
        "DELETE" if object => "DeleteObject",
        "PUT" | "GET" | "HEAD" | "DELETE" | "POST" => "Other",
        _ => return None,
    })
}
