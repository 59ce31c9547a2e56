//! The mount's Prometheus metrics: what they are, how they are recorded, and the HTTP endpoint that serves them
//! (`qsfs mount --metrics ADDR`, or `[metrics] listen` in `qsfs.toml`).
//!
//! Families (names follow Prometheus conventions; counters end in `_total`, durations are `_seconds`):
//! - `qsfs_fuse_operations_total{op}`, `qsfs_fuse_errors_total{op}`, `qsfs_fuse_operation_duration_seconds{op}`;
//! - `qsfs_store_requests_total{store,op}`, `qsfs_store_errors_total{store,op}`,
//!   `qsfs_store_request_duration_seconds{store,op}`, `qsfs_store_read_bytes_total{store}`,
//!   `qsfs_store_written_bytes_total{store}` (recorded by [`store::MeteredStore`], a `ShardStore` wrapper);
//! - `qsfs_store_up{store}`, `qsfs_upload_queue_segments`, `qsfs_upload_retrying_segments` (gauges refreshed at
//!   each scrape by the mount's `refresh` hook).
//!
//! Recording costs an atomic add and a histogram observation: cheap enough to stay on in every mount that asks
//! for metrics; a mount without `--metrics` records nothing.

pub mod health;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::error::{QsfsError, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub store: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 50 µs to about 50 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 4.0, 11))
}

/// Gauges read at scrape time from the live mount.
pub type RefreshHook = Box<dyn Fn(&Metrics) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    pub fuse_ops: Family<OpLabels, Counter>,
    pub fuse_errors: Family<OpLabels, Counter>,
    pub fuse_latency: Histograms<OpLabels>,
    pub store_requests: Family<StoreOpLabels, Counter>,
    pub store_errors: Family<StoreOpLabels, Counter>,
    pub store_latency: Histograms<StoreOpLabels>,
    pub store_read_bytes: Family<StoreLabels, Counter>,
    pub store_written_bytes: Family<StoreLabels, Counter>,
    pub store_up: Family<StoreLabels, Gauge>,
    pub upload_queue: Gauge,
    pub upload_retrying: Gauge,
    pub health: health::HealthMetrics,
    refresh: Mutex<Option<RefreshHook>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("qsfs");
        let m = Metrics {
            fuse_ops: Family::default(),
            fuse_errors: Family::default(),
            fuse_latency: Family::new_with_constructor(latency_histogram),
            store_requests: Family::default(),
            store_errors: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram),
            store_read_bytes: Family::default(),
            store_written_bytes: Family::default(),
            store_up: Family::default(),
            upload_queue: Gauge::default(),
            upload_retrying: Gauge::default(),
            health: health::HealthMetrics::default(),
            refresh: Mutex::new(None),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "fuse_operations",
            "FUSE requests answered",
            m.fuse_ops.clone(),
        );
        r.register(
            "fuse_errors",
            "FUSE requests answered with an error",
            m.fuse_errors.clone(),
        );
        r.register_with_unit(
            "fuse_operation_duration",
            "Time to answer a FUSE request",
            Unit::Seconds,
            m.fuse_latency.clone(),
        );
        r.register(
            "store_requests",
            "Requests to a store",
            m.store_requests.clone(),
        );
        r.register(
            "store_errors",
            "Store requests that failed",
            m.store_errors.clone(),
        );
        r.register_with_unit(
            "store_request_duration",
            "Time a store request took",
            Unit::Seconds,
            m.store_latency.clone(),
        );
        r.register_with_unit(
            "store_read",
            "Bytes read from a store",
            Unit::Bytes,
            m.store_read_bytes.clone(),
        );
        r.register_with_unit(
            "store_written",
            "Bytes written to a store",
            Unit::Bytes,
            m.store_written_bytes.clone(),
        );
        r.register(
            "store_up",
            "1 while the store answers, 0 while it is down",
            m.store_up.clone(),
        );
        r.register(
            "upload_queue_segments",
            "Segments closed locally and not yet on the stores",
            m.upload_queue.clone(),
        );
        r.register(
            "upload_retrying_segments",
            "Queued segments waiting to retry a failed upload",
            m.upload_retrying.clone(),
        );
        m.health.register(r);
        Arc::new(Metrics { registry, ..m })
    }

    /// Sets the hook that refreshes gauges from the live mount before each scrape.
    pub fn set_refresh(&self, hook: RefreshHook) {
        *self.refresh.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// One FUSE request answered after `took`.
    pub fn fuse_op(&self, op: &str, took: Duration, failed: bool) {
        let labels = OpLabels { op: op.to_string() };
        self.fuse_ops.get_or_create(&labels).inc();
        if failed {
            self.fuse_errors.get_or_create(&labels).inc();
        }
        self.fuse_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The metrics in the text exposition format (OpenMetrics), gauges refreshed first.
    pub fn render(&self) -> String {
        if let Some(hook) = self
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            hook(self);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Serves `GET /metrics` on `addr` from the runtime `rt` until the process ends; returns the bound address
    /// (port 0 picks a free one). Binding fails here, synchronously, so a bad address is a clear error at mount.
    pub fn serve(
        self: &Arc<Self>,
        addr: SocketAddr,
        rt: &tokio::runtime::Handle,
    ) -> Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| QsfsError::io(format!("serving metrics on {addr}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| QsfsError::io("reading the metrics address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| QsfsError::io("serving metrics", e))?;
        let me = self.clone();
        rt.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "metrics endpoint not served");
                    return;
                }
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(http::serve_connection(stream, me.clone()));
            }
        });
        Ok(bound)
    }
}

mod http {
    //! One HTTP/1.1 connection to the metrics endpoint (hyper): `GET /metrics` answers the exposition, anything
    //! else 404.
    use std::sync::Arc;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    use super::Metrics;

    pub async fn serve_connection(stream: tokio::net::TcpStream, metrics: Arc<Metrics>) {
        let service = service_fn(move |req: Request<Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
        });
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "metrics connection ended");
        }
    }

    fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
        let (status, ctype, body) = if req.uri().path() == "/metrics" {
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "only /metrics is served here\n".to_string(),
            )
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    }
}
