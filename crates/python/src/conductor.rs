//! `Conductor`: the Python face of the engine. Each method converts its
//! arguments, calls the core `Conductor` on the engine's runtime with the GIL
//! released, and converts the answer; the rules all live in the core.

use std::path::Path;
use std::sync::Arc;

use opsconductor::{
    Actor, ApplyBatch, ExecRequest, RunFilter, RunStatus, SetSecret, SubmitRequest,
};
use pyo3::exceptions::{PyTypeError, PyUserWarning};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use serde_json::Value;

use crate::convert;
use crate::engine::Engine;
use crate::errors::{self, IntoPyResult};
use crate::run::PyRun;

/// The OpsConductor engine, in this process.
#[pyclass(name = "Conductor", module = "opsconductor._native", frozen)]
pub(crate) struct PyConductor {
    engine: Arc<Engine>,
}

/// Emits a Python `UserWarning` (a notice the engine wants a person to see).
fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    let warnings = py.import("warnings")?;
    warnings.call_method1("warn", (message, py.get_type::<PyUserWarning>(), 1))?;
    Ok(())
}

/// Parses definitions in the job-file format from a path, a YAML/JSON
/// string, a target dataclass, a mapping, or a list of those.
fn load(obj: &Bound<'_, PyAny>, default_kind: &str) -> PyResult<ApplyBatch> {
    if convert::is_pathlike(obj)? {
        let path = convert::fspath(obj)?;
        return opsconductor::spec::load_path(Path::new(&path)).py(obj.py());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let text = s.to_cow()?;
        if !text.contains('\n') && Path::new(text.trim()).is_file() {
            // A file name is never a valid definition; say what was probably meant.
            return Err(errors::validation(
                "definition",
                &format!(
                    "'{text}' is a file name, and strings are read as YAML; pass pathlib.Path({text:?}) to read the file"
                ),
            ));
        }
        return opsconductor::spec::parse_str(&text, "<string>", None).py(obj.py());
    }
    let docs: Vec<Bound<'_, PyAny>> = if is_document(obj)? {
        vec![obj.clone()]
    } else {
        obj.try_iter()
            .map_err(|_| not_a_source(obj))?
            .collect::<PyResult<_>>()?
    };
    let mut text = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if !is_document(doc)? {
            return Err(not_a_source(doc));
        }
        let doc = if doc.hasattr("_document")? {
            doc.call_method0("_document")?
        } else {
            doc.clone()
        };
        let mut value = convert::from_py(&doc, "definition")?;
        if let Value::Object(map) = &mut value
            && !map.contains_key("kind")
        {
            map.insert("kind".into(), Value::String(default_kind.into()));
        }
        if i > 0 {
            text.push_str("\n---\n");
        }
        // JSON is YAML: the engine's own parser checks it like a file.
        text.push_str(
            &serde_json::to_string_pretty(&value)
                .map_err(|e| errors::internal(format!("cannot serialize the definition: {e}")))?,
        );
    }
    opsconductor::spec::parse_str(&text, "<definition>", None).py(obj.py())
}

/// A single definition: a target dataclass or a mapping.
fn is_document(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.hasattr("_document")? || (obj.hasattr("keys")? && obj.hasattr("items")?))
}

fn not_a_source(obj: &Bound<'_, PyAny>) -> PyErr {
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into());
    PyTypeError::new_err(format!(
        "expected a dict, a YAML/JSON string, a pathlib.Path, a target or a list of them, not {ty}"
    ))
}

impl PyConductor {
    fn run_handle(&self, run: opsconductor::Run) -> PyRun {
        PyRun::new(self.engine.clone(), run)
    }

    /// Submitted: wait if asked (cancelling on Ctrl-C, like the CLI).
    fn submitted(
        &self,
        py: Python<'_>,
        run: opsconductor::Run,
        wait: bool,
        check: bool,
    ) -> PyResult<PyRun> {
        let handle = self.run_handle(run);
        if wait || check {
            let done = handle.finish(py, None, true)?;
            PyRun::checked(py, &done, check)?;
        }
        Ok(handle)
    }
}

#[pymethods]
impl PyConductor {
    /// Opens the database and starts the engine.
    ///
    /// ``database_url``: ``sqlite://PATH`` (relative, e.g.
    /// ``sqlite://ops.db``), ``sqlite:///ABS/PATH`` (absolute — three
    /// slashes mean ``/ABS/PATH``, unlike SQLAlchemy's four),
    /// ``sqlite::memory:``, a plain path or ``pathlib.Path``, or
    /// ``postgres://…`` when this build includes PostgreSQL. The default is
    /// the CLI's, ``sqlite://opsconductor.db``, so both share one database.
    ///
    /// ``master_key`` encrypts secrets: a base64 key, or ``1:KEY,2:KEY``
    /// during a rotation. By default it comes from ``OPSC_MASTER_KEY``,
    /// ``OPSC_MASTER_KEY_FILE`` or ``OPSC_MASTER_PASSPHRASE``, else (SQLite
    /// only) the key file next to the database, created on first use with a
    /// ``UserWarning`` saying so.
    ///
    /// ``workers`` background workers execute queued runs on the engine's
    /// own threads. With ``workers=0`` nothing runs in the background:
    /// ``run(..., wait=True)`` and ``Run.wait()`` execute the run in this
    /// process; other runs wait for a worker elsewhere (e.g. ``opsconductor
    /// worker`` on the same database).
    ///
    /// ``actor`` is the name recorded on runs and in the audit log (default:
    /// ``$USER``).
    ///
    /// Use it as a context manager, or call ``close()``, to stop the
    /// workers cleanly.
    #[new]
    #[pyo3(signature = (database_url = None, *, master_key = None, workers = 2, actor = None))]
    fn new(
        py: Python<'_>,
        database_url: Option<&Bound<'_, PyAny>>,
        master_key: Option<String>,
        workers: usize,
        actor: Option<String>,
    ) -> PyResult<Self> {
        let url = match database_url {
            None => opsconductor::DEFAULT_DATABASE_URL.to_string(),
            Some(u) if u.is_none() => opsconductor::DEFAULT_DATABASE_URL.to_string(),
            Some(u) => convert::fspath(u)?,
        };
        let actor = actor.map(Actor::new).unwrap_or_else(Actor::local_user);
        let (engine, notice) = Engine::open(py, url, master_key, workers, actor)?;
        if let Some(n) = notice {
            warn(py, &n)?;
        }
        Ok(Self {
            engine: Arc::new(engine),
        })
    }

    /// Stops the background workers — waiting for the runs in progress to
    /// end — and the engine. Idempotent. Ctrl-C while it waits stops at
    /// once; interrupted runs are rescued by the next worker on this
    /// database once their lease expires.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.engine.close(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the engine; exceptions propagate.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        self.engine.close(py)
    }

    /// True once ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.engine.is_closed()
    }

    /// The database URL this engine uses.
    #[getter]
    fn database_url(&self) -> &str {
        &self.engine.url
    }

    /// How many background workers this engine runs.
    #[getter]
    fn workers(&self) -> usize {
        self.engine.workers
    }

    fn __repr__(&self) -> String {
        format!(
            "<Conductor {:?} workers={}{}>",
            self.engine.url,
            self.engine.workers,
            if self.engine.is_closed() {
                " closed"
            } else {
                ""
            }
        )
    }

    // -- definitions --------------------------------------------------------

    /// Checks definitions (a dict, a YAML/JSON string, a ``pathlib.Path`` to a
    /// file or directory, a target, or a list of them) and stores all of them
    /// in one transaction — or nothing if anything is invalid. Returns what
    /// happened to each object.
    fn apply<'py>(
        &self,
        py: Python<'py>,
        source: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let batch = load(source, "Job")?;
        let items = self
            .engine
            .block(py, self.engine.oc.apply(&batch, &self.engine.actor))?;
        items
            .iter()
            .map(|i| convert::build_from(py, "_apply_item_from_json", i))
            .collect()
    }

    /// Checks definitions like ``apply()`` without storing anything; raises
    /// ``ValidationError`` naming the file, line and field of the first problem.
    fn validate(&self, py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<()> {
        let batch = load(source, "Job")?;
        self.engine.oc.validate(&batch).py(py)
    }

    /// Defines (or updates) one job, in the CLI's job-file format: a dict
    /// (``{"name": …, "steps": [exec_("uptime")]}``, ``kind`` optional), a
    /// YAML/JSON string, or a ``pathlib.Path``. An unchanged definition
    /// stores nothing; a changed one becomes a new version. Returns the
    /// job's current version.
    fn define_job<'py>(
        &self,
        py: Python<'py>,
        job: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = load(job, "Job")?;
        if batch.jobs.len() != 1 || !batch.targets.is_empty() {
            return Err(errors::validation(
                "job",
                &format!(
                    "define_job takes exactly one job, got {} job(s) and {} target(s); use apply() for several definitions",
                    batch.jobs.len(),
                    batch.targets.len()
                ),
            ));
        }
        let name = batch.jobs[0].name.clone();
        let oc = &self.engine.oc;
        let job = self.engine.block(py, async {
            oc.apply(&batch, &self.engine.actor).await?;
            oc.job(&name, None, &self.engine.actor).await
        })?;
        convert::build_from(py, "_job_from_json", &job)
    }

    /// The latest version of every job.
    fn jobs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let jobs = self
            .engine
            .block(py, self.engine.oc.jobs(&self.engine.actor))?;
        jobs.iter()
            .map(|j| convert::build_from(py, "_job_from_json", j))
            .collect()
    }

    /// One version of a job (the latest by default). Raises ``NotFound``.
    #[pyo3(signature = (name, version = None))]
    fn job<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        version: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let job = self
            .engine
            .block(py, self.engine.oc.job(name, version, &self.engine.actor))?;
        convert::build_from(py, "_job_from_json", &job)
    }

    /// Every stored version of a job, oldest first. Raises ``NotFound``.
    fn job_versions<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
        // The engine names the job and the known ones if it is missing.
        let versions = self
            .engine
            .block(py, self.engine.oc.job_versions(name, &self.engine.actor))?;
        versions
            .iter()
            .map(|j| convert::build_from(py, "_job_from_json", j))
            .collect()
    }

    // -- targets ------------------------------------------------------------

    /// Adds or replaces a target (``Local``, ``Ssh``, ``Docker``, ``WinRm``)
    /// and returns it as stored.
    fn add_target<'py>(
        &self,
        py: Python<'py>,
        target: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !target.hasattr("_document")? {
            return Err(PyTypeError::new_err(
                "add_target expects a Local, Ssh, Docker or WinRm target",
            ));
        }
        let batch = load(target, "Target")?;
        let name = match batch.targets.as_slice() {
            [t] => t.name.clone(),
            _ => {
                return Err(errors::internal(
                    "a target became several definitions".into(),
                ));
            }
        };
        let oc = &self.engine.oc;
        let stored = self.engine.block(py, async {
            oc.apply(&batch, &self.engine.actor).await?;
            oc.target(&name, &self.engine.actor).await
        })?;
        convert::build_from(py, "_target_from_json", &stored)
    }

    /// Every schedule (``kind: Schedule`` documents, applied like jobs), as
    /// dicts: the spec fields plus ``paused``, ``state``, ``next_fire``,
    /// ``next_fire_local`` and ``owner``.
    fn schedules<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let all = self
            .engine
            .block(py, self.engine.oc.schedules(&self.engine.actor))?;
        all.iter()
            .map(|s| convert::to_py(py, &convert::json(s)?))
            .collect()
    }

    /// One schedule with its newest fire records (``recent``). Raises ``NotFound``.
    fn schedule<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let s = self
            .engine
            .block(py, self.engine.oc.schedule(name, &self.engine.actor))?;
        convert::to_py(py, &convert::json(&s)?)
    }

    /// The next ``count`` fire times (1-1000), as RFC 3339 UTC strings.
    #[pyo3(signature = (name, count = 5))]
    fn next_fire_times(&self, py: Python<'_>, name: &str, count: usize) -> PyResult<Vec<String>> {
        let times = self.engine.block(
            py,
            self.engine
                .oc
                .next_fire_times(name, count, &self.engine.actor),
        )?;
        Ok(times.iter().map(|t| t.to_rfc3339()).collect())
    }

    /// Pauses a schedule (kept across re-applies of its file).
    fn pause_schedule(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.engine
            .block(py, self.engine.oc.pause_schedule(name, &self.engine.actor))
            .map(|_| ())
    }

    /// Resumes a paused schedule from now.
    fn resume_schedule(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.engine
            .block(py, self.engine.oc.resume_schedule(name, &self.engine.actor))
            .map(|_| ())
    }

    /// Queues a run of the schedule's job now; returns the run id.
    fn run_schedule_now(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        let run = self.engine.block(
            py,
            self.engine.oc.run_schedule_now(name, &self.engine.actor),
        )?;
        Ok(run.id.to_string())
    }

    /// Deletes a schedule (its runs stay). Raises ``NotFound``.
    fn delete_schedule(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.engine
            .block(py, self.engine.oc.delete_schedule(name, &self.engine.actor))
    }

    /// Every target, including the implicit ``local`` unless one is defined.
    fn targets<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let all = self
            .engine
            .block(py, self.engine.oc.targets(&self.engine.actor))?;
        all.iter()
            .map(|t| convert::build_from(py, "_target_from_json", t))
            .collect()
    }

    /// One target. Raises ``NotFound`` (listing the known ones).
    fn target<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let t = self
            .engine
            .block(py, self.engine.oc.target(name, &self.engine.actor))?;
        convert::build_from(py, "_target_from_json", &t)
    }

    /// Removes a target. Raises ``NotFound`` if there is none of that name.
    /// Runs already submitted keep the targets they resolved.
    fn remove_target(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        // Through the engine: the actor is checked and the deletion audited.
        self.engine
            .block(py, self.engine.oc.remove_target(name, &self.engine.actor))
    }

    /// Checks one target: connects, authenticates and runs a trivial probe.
    /// Returns a ``TargetCheck`` (``ok``, ``os``, ``error``, ``latency_ms``);
    /// an unreachable target is ``ok=False``, not an exception. Raises
    /// ``NotFound`` for an unknown target.
    fn check_target<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        // The exact name (never a pattern); NotFound names the known targets.
        let check = self
            .engine
            .block(py, self.engine.oc.check_target(name, &self.engine.actor))?;
        convert::build_from(py, "_target_check_from_json", &check)
    }

    /// Checks every target a selector picks (default: all), at most
    /// ``concurrency`` at once; one ``TargetCheck`` per target.
    #[pyo3(signature = (targets = None, concurrency = 10))]
    fn check_targets<'py>(
        &self,
        py: Python<'py>,
        targets: Option<&Bound<'py, PyAny>>,
        concurrency: usize,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let selector = match targets.filter(|t| !t.is_none()) {
            Some(t) => convert::selector(t)?,
            None => vec!["*".to_string()],
        };
        let checks = self.engine.block(
            py,
            self.engine
                .oc
                .check_targets(&selector, concurrency, &self.engine.actor),
        )?;
        checks
            .iter()
            .map(|c| convert::build_from(py, "_target_check_from_json", c))
            .collect()
    }

    /// The host key fingerprint an SSH target offers now, and the one it
    /// pins (``None`` if none): ``(offered, pinned)``. To accept the offered
    /// key after checking it out of band, call ``trust_host_key``.
    fn offered_host_key(&self, py: Python<'_>, name: &str) -> PyResult<(String, Option<String>)> {
        self.engine.block(
            py,
            self.engine.oc.offered_host_key(name, &self.engine.actor),
        )
    }

    /// Pins ``fingerprint`` (``SHA256:…``) as an SSH target's host key;
    /// returns the target as stored.
    fn trust_host_key<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        fingerprint: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = self.engine.block(
            py,
            self.engine
                .oc
                .trust_host_key(name, fingerprint, &self.engine.actor),
        )?;
        convert::build_from(py, "_target_from_json", &t)
    }

    // -- secrets ------------------------------------------------------------

    /// Creates or updates a secret; returns its metadata (never the value).
    ///
    /// ``value`` is ``str`` (stored as UTF-8) or ``bytes``. ``kind`` is one of
    /// ``generic``, ``password``, ``ssh_key``, ``token``, ``certificate``
    /// (default: ``generic`` for a new secret, unchanged for an existing
    /// one); ``description`` likewise. A value too short to be masked in
    /// output gives a ``UserWarning``.
    #[pyo3(signature = (name, value, kind = None, description = None))]
    fn set_secret<'py>(
        &self,
        py: Python<'py>,
        name: String,
        value: &Bound<'py, PyAny>,
        kind: Option<String>,
        description: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value: Vec<u8> = if let Ok(s) = value.cast::<PyString>() {
            s.to_cow()?.as_bytes().to_vec()
        } else if let Ok(b) = value.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(b) = value.cast::<PyByteArray>() {
            b.to_vec()
        } else {
            return Err(PyTypeError::new_err("a secret value must be str or bytes"));
        };
        let req = SetSecret {
            name: name.clone(),
            kind,
            description,
            value,
        };
        let oc = &self.engine.oc;
        let (outcome, info) = self.engine.block(py, async {
            let outcome = oc.set_secret(req, &self.engine.actor).await?;
            let info = oc.secret(&name, &self.engine.actor).await?;
            Ok((outcome, info))
        })?;
        for w in &outcome.warnings {
            warn(py, &format!("secret '{name}': {w}"))?;
        }
        convert::build_from(py, "_secret_from_json", &info)
    }

    /// Every secret's metadata and where it is used — never values.
    fn secrets<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let all = self
            .engine
            .block(py, self.engine.oc.secrets(&self.engine.actor))?;
        all.iter()
            .map(|s| convert::build_from(py, "_secret_from_json", s))
            .collect()
    }

    /// Deletes a secret. Refused with ``Conflict`` while jobs or targets use
    /// it, unless ``force``. Raises ``NotFound``.
    #[pyo3(signature = (name, force = false))]
    fn delete_secret(&self, py: Python<'_>, name: &str, force: bool) -> PyResult<()> {
        self.engine.block(
            py,
            self.engine
                .oc
                .delete_secret(name, force, &self.engine.actor),
        )
    }

    // -- runs ---------------------------------------------------------------

    /// Submits a run of a stored job and returns it.
    ///
    /// ``params`` are checked against the job's schema first
    /// (``ValidationError`` naming the field, e.g. ``params.version``);
    /// ``targets`` overrides the job's selector (``"tag:web"``, ``"web-*"``,
    /// or a list); ``version`` runs an older version. Every template is
    /// rendered for every target before anything is queued.
    ///
    /// ``wait=True`` returns once the run has ended (executing it in this
    /// process when ``workers=0``); Ctrl-C then cancels the run.
    /// ``check=True`` also waits, and raises ``ExecutionError`` unless the
    /// run succeeded.
    #[pyo3(signature = (job, params = None, *, targets = None, version = None, wait = false, check = false))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        job: String,
        params: Option<&Bound<'_, PyAny>>,
        targets: Option<&Bound<'_, PyAny>>,
        version: Option<u32>,
        wait: bool,
        check: bool,
    ) -> PyResult<PyRun> {
        let params = match params {
            Some(p) => convert::from_py(p, "params")?,
            None => Value::Null,
        };
        let targets = targets
            .filter(|t| !t.is_none())
            .map(convert::selector)
            .transpose()?;
        let req = SubmitRequest {
            job,
            version,
            params,
            targets,
        };
        let run = self
            .engine
            .block(py, self.engine.oc.submit(req, &self.engine.actor))?;
        self.submitted(py, run, wait, check)
    }

    /// The plan of a run of ``job`` — a dry run: strategy, batches, the
    /// steps and each target's rendered commands (secrets by name only),
    /// after every check ``run`` makes, with nothing queued or run. Returns
    /// a ``dict`` (the REST API's ``POST /api/v1/jobs/{name}/plan`` shape).
    #[pyo3(signature = (job, params = None, *, targets = None, version = None))]
    fn plan<'py>(
        &self,
        py: Python<'py>,
        job: String,
        params: Option<&Bound<'_, PyAny>>,
        targets: Option<&Bound<'_, PyAny>>,
        version: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = match params {
            Some(p) => convert::from_py(p, "params")?,
            None => Value::Null,
        };
        let targets = targets
            .filter(|t| !t.is_none())
            .map(convert::selector)
            .transpose()?;
        let req = SubmitRequest {
            job,
            version,
            params,
            targets,
        };
        let plan = self
            .engine
            .block(py, self.engine.oc.plan(req, &self.engine.actor))?;
        convert::to_py(py, &convert::json(&plan)?)
    }

    /// Runs an ad-hoc command line with each target's shell and returns the
    /// run (listed under the job name ``exec``). The command is not a
    /// template. ``targets`` is a selector (default ``local``); ``timeout``
    /// limits each target (seconds, ``timedelta`` or ``"30s"``; the process
    /// group is killed); ``concurrency`` caps targets at once. ``wait`` and
    /// ``check`` as for ``run()``.
    #[pyo3(signature = (command, targets = None, *, timeout = None, concurrency = None, wait = false, check = false))]
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        py: Python<'_>,
        command: String,
        targets: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        concurrency: Option<usize>,
        wait: bool,
        check: bool,
    ) -> PyResult<PyRun> {
        let mut req = ExecRequest::new(command);
        if let Some(t) = targets.filter(|t| !t.is_none()) {
            req.targets = convert::selector(t)?;
        }
        req.timeout = convert::duration(timeout, "timeout")?;
        if let Some(c) = concurrency {
            req.concurrency = c;
        }
        let run = self
            .engine
            .block(py, self.engine.oc.submit_exec(req, &self.engine.actor))?;
        self.submitted(py, run, wait, check)
    }

    /// A run by its id or a unique prefix of it (at least 4 characters).
    fn get_run(&self, py: Python<'_>, run_id: &str) -> PyResult<PyRun> {
        let oc = &self.engine.oc;
        let detail = self.engine.block(py, async {
            let id = oc.resolve_run_id(run_id, &self.engine.actor).await?;
            oc.run(id, &self.engine.actor).await
        })?;
        Ok(self.run_handle(detail.run))
    }

    /// Approval requests, newest first (as dicts): only runs waiting for
    /// approval unless ``all``; at most ``limit`` (1-1000).
    #[pyo3(signature = (all = false, limit = 50))]
    fn approvals<'py>(
        &self,
        py: Python<'py>,
        all: bool,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = self.engine.block(
            py,
            self.engine.oc.approvals(!all, limit, &self.engine.actor),
        )?;
        convert::to_py(py, &convert::json(&v)?)
    }

    /// Runs, newest first: optionally only of one ``job`` and in some
    /// ``status``\ (es), or of one ``schedule``, at most ``limit``.
    #[pyo3(signature = (job = None, status = None, limit = 50, schedule = None))]
    fn runs(
        &self,
        py: Python<'_>,
        job: Option<String>,
        status: Option<&Bound<'_, PyAny>>,
        limit: usize,
        schedule: Option<String>,
    ) -> PyResult<Vec<PyRun>> {
        let statuses = match status.filter(|s| !s.is_none()) {
            None => vec![],
            Some(s) => convert::selector(s)
                .map_err(|_| PyTypeError::new_err("status: expected a string or a list of them"))?
                .iter()
                .map(|s| s.parse::<RunStatus>())
                .collect::<Result<_, _>>()
                .py(py)?,
        };
        let filter = RunFilter {
            job,
            statuses,
            before: None,
            limit,
            schedule,
        };
        let runs = self
            .engine
            .block(py, self.engine.oc.runs(&filter, &self.engine.actor))?;
        Ok(runs.into_iter().map(|r| self.run_handle(r)).collect())
    }
}
