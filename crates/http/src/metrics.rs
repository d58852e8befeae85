//! `/metrics` in the Prometheus text format: HTTP requests by route and
//! status, runs finished by status with their durations, step durations,
//! executor errors, and — read at scrape time — the queue depth and the runs
//! in progress.
//!
//! Each server keeps its own recorder (not the process-global one), so
//! several servers in one process (tests, embedders) never mix counts.
//! Runs are counted by the server whose workers executed them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use opsconductor::Conductor;
use opsconductor::RunFilter;
use opsconductor::bus::Event;
use opsconductor::model::{RunStatus, StepStatus};
use tokio_util::sync::CancellationToken;

const META: Metadata<'static> = Metadata::new("opsconductor_http", Level::INFO, None);

/// Most runs counted at scrape time for the queue and running gauges.
const GAUGE_CAP: usize = 1000;

/// The server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            300.0, 900.0, 3600.0,
        ]) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        for (name, help) in [
            (
                "opsc_http_requests_total",
                "HTTP requests by method, route and status",
            ),
            (
                "opsc_http_request_duration_seconds",
                "HTTP request latency by method and route",
            ),
            (
                "opsc_runs_finished_total",
                "Runs executed by this server's workers, by final status",
            ),
            (
                "opsc_run_duration_seconds",
                "Run durations (claim to end) by final status",
            ),
            (
                "opsc_step_duration_seconds",
                "Step × target durations by status",
            ),
            (
                "opsc_executor_errors_total",
                "Steps that failed without an exit code (the executor could not run them)",
            ),
            (
                "opsc_queue_depth",
                "Queued runs in the database (counted up to 1000 at scrape time)",
            ),
            (
                "opsc_runs_running",
                "Running runs in the database (counted up to 1000 at scrape time)",
            ),
        ] {
            recorder.describe_counter(name.into(), None, help.into());
        }
        Self { recorder, handle }
    }

    /// Counts one HTTP request.
    pub fn http_request(&self, method: &str, route: &str, status: u16, secs: f64) {
        let labels = [("method", method.to_string()), ("route", route.to_string())];
        let mut with_status = labels.to_vec();
        with_status.push(("status", status.to_string()));
        self.recorder
            .register_counter(&key("opsc_http_requests_total", &with_status), &META)
            .increment(1);
        self.recorder
            .register_histogram(&key("opsc_http_request_duration_seconds", &labels), &META)
            .record(secs);
    }

    fn run_finished(&self, status: RunStatus, secs: Option<f64>) {
        let l = [("status", status.as_str().to_string())];
        self.recorder
            .register_counter(&key("opsc_runs_finished_total", &l), &META)
            .increment(1);
        if let Some(s) = secs {
            self.recorder
                .register_histogram(&key("opsc_run_duration_seconds", &l), &META)
                .record(s);
        }
    }

    fn step_finished(&self, status: StepStatus, secs: Option<f64>, executor_error: bool) {
        let l = [("status", status.as_str().to_string())];
        if let Some(s) = secs {
            self.recorder
                .register_histogram(&key("opsc_step_duration_seconds", &l), &META)
                .record(s);
        }
        if executor_error {
            self.recorder
                .register_counter(&key("opsc_executor_errors_total", &[]), &META)
                .increment(1);
        }
    }

    /// The text exposition, with the queue gauges read from the store now.
    pub async fn render(&self, oc: &Conductor) -> String {
        for (name, status) in [
            ("opsc_queue_depth", RunStatus::Queued),
            ("opsc_runs_running", RunStatus::Running),
        ] {
            let filter = RunFilter {
                statuses: vec![status],
                limit: GAUGE_CAP,
                ..Default::default()
            };
            if let Ok(runs) = oc.runs(&filter, &server_actor()).await {
                self.recorder
                    .register_gauge(&key(name, &[]), &META)
                    .set(runs.len() as f64);
            }
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Watches the engine's wake-ups and counts each run this server's workers
/// finished (once), with its step results.
pub async fn observe_runs(oc: Conductor, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut rx = oc.subscribe();
    let me = oc.config().worker_name.clone();
    let mut seen: HashSet<opsconductor::RunId> = HashSet::new();
    let mut order: VecDeque<opsconductor::RunId> = VecDeque::new();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = rx.recv() => ev,
        };
        let id = match ev {
            Ok(Event::Updated(id)) => id,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if seen.contains(&id) {
            continue;
        }
        let Ok(detail) = oc.run(id, &server_actor()).await else {
            continue;
        };
        let run = &detail.run;
        // Workers of this process are named `NAME` (execute) or `NAME#i` (worker loops).
        let ours = run.worker.as_deref().is_some_and(|w| {
            w == me
                || w.strip_prefix(me.as_str())
                    .is_some_and(|rest| rest.starts_with('#'))
        });
        if !run.status.is_terminal() || !ours {
            continue;
        }
        seen.insert(id);
        order.push_back(id);
        if order.len() > 10_000
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        let secs = |a: chrono::DateTime<chrono::Utc>, b: Option<chrono::DateTime<chrono::Utc>>| {
            b.and_then(|b| (b - a).to_std().ok())
                .map(|d: Duration| d.as_secs_f64())
        };
        metrics.run_finished(
            run.status,
            run.started_at.and_then(|s| secs(s, run.finished_at)),
        );
        for r in &detail.results {
            let executor_error = r.status == StepStatus::Failed
                && r.exit_code.is_none()
                && r.signal.is_none()
                && r.error.is_some();
            metrics.step_finished(r.status, secs(r.started_at, r.finished_at), executor_error);
        }
    }
}

/// The server reading for itself (gauges, its own workers' runs): trusted,
/// like any process on its own database.
fn server_actor() -> opsconductor::Actor {
    opsconductor::Actor::new("server")
}
