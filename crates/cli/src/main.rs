//! `opsconductor`: the command-line front end. It parses flags, calls the
//! engine and prints; every rule lives in the core.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command-line front end: printing is its job"
)]

mod admin;
mod approvals;
mod commands;
mod notify;
mod output;
mod prune;
mod schedules;
mod secrets;
mod serve;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use opsconductor::{Error, ErrorKind};

/// Operations automation: run commands, scripts and file copies on your hosts,
/// watch them live, and find every result afterwards.
#[derive(Parser, Debug)]
#[command(name = "opsconductor", version, max_term_width = 100)]
#[command(
    after_help = "Quick start:\n  opsconductor apply -f examples/jobs/\n  opsconductor run hello -p name=world --follow\n  opsconductor runs list"
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Database: `sqlite://FILE` (created if missing) or a path.
    #[arg(long, global = true, env = "OPSC_DATABASE_URL", default_value = opsconductor::DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Print machine-readable JSON instead of tables and text.
    #[arg(long, global = true)]
    json: bool,
    /// When to use colours.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Log engine internals to stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Colour choice.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorChoice {
    /// When writing to a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load job and target definitions from YAML files (all or nothing).
    Apply {
        /// A file, a directory (every .yaml/.yml/.json inside, sorted) or `-` for stdin. Repeatable.
        #[arg(
            short = 'f',
            long = "file",
            required = true,
            value_name = "FILE_OR_DIR"
        )]
        files: Vec<PathBuf>,
        /// Check everything, store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a job and wait for it (use --follow to stream its output).
    Run(commands::RunArgs),
    /// Run an ad-hoc command on targets, streaming output live.
    #[command(after_help = "Example:\n  opsconductor exec -t 'tag:web' --timeout 30s -- uptime")]
    Exec(commands::ExecArgs),
    /// Inspect and control runs.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Inspect jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Inspect targets.
    #[command(subcommand)]
    Targets(TargetsCmd),
    /// Inspect and control schedules (defined with `kind: Schedule` documents).
    #[command(subcommand)]
    Schedules(schedules::SchedulesCmd),
    /// Manage secrets: encrypted at rest, write-only, injected as environment variables.
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    /// Read the audit log (who did what, when).
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        /// `verify`: recompute the hash chain and name the first altered, deleted or reordered event.
        #[command(subcommand)]
        check: Option<admin::AuditCmd>,
        /// Only events about this object (e.g. `secret:db-password`).
        #[arg(long)]
        object: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Remove finished runs, their logs and (optionally) old audit events, in batches.
    Prune(prune::PruneArgs),
    /// Execute queued runs (and rescue runs whose worker died) until stopped.
    Worker(admin::WorkerArgs),
    /// Serve the REST API (users, tokens, live logs, audit) with workers in-process.
    Serve(serve::ServeArgs),
    /// Notification channels, test deliveries and delivery history.
    #[command(subcommand)]
    Notifications(notify::NotifyCmd),
    /// Runs waiting for approval: list them, show one's plan.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// Approve a run waiting for approval (never your own).
    Approve {
        /// Run id, or a unique prefix of it.
        id: String,
        /// Why (required when the job says `reason_required`).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a run waiting for approval; it ends `rejected`.
    Reject {
        /// Run id, or a unique prefix of it.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum RunsCmd {
    /// List runs, newest first.
    List {
        /// Only runs of this job (`exec` for ad-hoc commands).
        #[arg(long)]
        job: Option<String>,
        /// Only runs in this state (queued, running, succeeded, failed, cancelled, timed_out). Repeatable.
        #[arg(long)]
        status: Vec<String>,
        /// Only runs of this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show a run and its per step × target results.
    Show {
        /// Run id, or a unique prefix of it.
        id: String,
    },
    /// Print a run's output (live with --follow).
    Logs {
        /// Run id, or a unique prefix of it.
        id: String,
        /// Keep streaming until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a run: a queued run is dropped, a running one has its processes killed.
    Cancel {
        /// Run id, or a unique prefix of it.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum JobsCmd {
    /// List jobs (latest versions).
    List,
    /// Show a job's definition.
    Show {
        /// Job name.
        name: String,
        /// A specific version (default: latest).
        #[arg(long)]
        version: Option<u32>,
    },
    /// List every version of a job.
    Versions {
        /// Job name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum TargetsCmd {
    /// List targets (the implicit `local` included).
    List,
    /// Show a target.
    Show {
        /// Target name.
        name: String,
    },
    /// Connect to targets, authenticate and run a probe; print a table.
    Check {
        /// Which targets (names, globs, tag:NAME, *).
        #[arg(default_value = "*")]
        selector: String,
        /// How many at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Show the host key an SSH target offers and pin it after confirmation.
    Trust {
        /// Target name.
        name: String,
        /// Do not ask (for scripts): pin whatever key is offered now.
        #[arg(long)]
        yes: bool,
    },
}

/// Exit codes, documented in the README.
pub mod exit {
    /// The run or command succeeded.
    pub const OK: u8 = 0;
    /// The run failed, or an operational error (store unreachable, …).
    pub const FAILED: u8 = 1;
    /// Bad input: usage, files, parameters, unknown names.
    pub const USAGE: u8 = 2;
    /// The run reached a time limit.
    pub const TIMED_OUT: u8 = 124;
    /// The run was cancelled.
    pub const CANCELLED: u8 = 130;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server logs its requests (info) unless told otherwise.
    init_tracing(
        cli.global
            .verbose
            .saturating_add(u8::from(matches!(cli.command, Cmd::Serve(_)))),
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let out = output::Out::new(cli.global.color, cli.global.json);
    match rt.block_on(dispatch(cli, &out)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            out.error(&e);
            ExitCode::from(code_for(&e))
        }
    }
}

fn code_for(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Validation | ErrorKind::NotFound | ErrorKind::Conflict => exit::USAGE,
        _ => exit::FAILED,
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,sqlx=warn",
        2 => "debug,sqlx=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPSC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether a command only reads (or changes) what a database already holds:
/// such commands refuse a missing SQLite file instead of creating an empty
/// one (and a master key file) and reporting success on it. Commands that
/// create state (apply, run, exec, secrets set, worker, serve) create it.
fn reads_existing_state(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Apply { .. } | Cmd::Run(_) | Cmd::Exec(_) | Cmd::Worker(_) | Cmd::Serve(_) => false,
        Cmd::Secrets(s) => !matches!(s, secrets::SecretsCmd::Set { .. }),
        Cmd::Runs(_) | Cmd::Jobs(_) | Cmd::Targets(_) | Cmd::Audit { .. } | Cmd::Prune(_) => true,
        Cmd::Schedules(_) => true,
        Cmd::Notifications(_) => true,
        Cmd::Approvals(_) | Cmd::Approve { .. } | Cmd::Reject { .. } => true,
    }
}

async fn dispatch(cli: Cli, out: &output::Out) -> Result<u8, Error> {
    let cli = match cli.command {
        Cmd::Serve(args) => return serve::run(args, &cli.global.database_url, out).await,
        command => Cli { command, ..cli },
    };
    if reads_existing_state(&cli.command)
        && let Some(path) = opsconductor::sqlite_file(&cli.global.database_url)
        && !path.exists()
        // A missing directory is the store's clearer error (exit 1).
        && path
            .parent()
            .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
    {
        return Err(Error::validation(
            "database url",
            format!(
                "no database at {}: this command reads an existing database and does not create one \
                 (check --database-url / OPSC_DATABASE_URL; `opsconductor apply` creates a database)",
                path.display()
            ),
        ));
    }
    let (builder, notice) = opsconductor::builder_with_notice(&cli.global.database_url).await?;
    if let Some(n) = notice {
        out.note(&n);
    }
    let builder = match &cli.command {
        Cmd::Worker(w) => builder
            .lease(w.lease)
            .poll(w.poll)
            .retention(w.retention())
            .scheduler(opsconductor::SchedulerConfig::from_env()),
        _ => builder,
    };
    let oc = builder.build().await?;
    match cli.command {
        Cmd::Secrets(cmd) => secrets::secrets(&oc, out, cmd).await,
        Cmd::Notifications(cmd) => notify::notifications(&oc, out, cmd).await,
        Cmd::Audit {
            check: Some(admin::AuditCmd::Verify { anchor }),
            ..
        } => admin::audit_verify(&oc, out, anchor.as_deref()).await,
        Cmd::Audit {
            check: Some(admin::AuditCmd::Export { until, output }),
            ..
        } => prune::audit_export(&oc, out, until, output.as_ref()).await,
        Cmd::Prune(args) => prune::prune(&oc, out, &args).await,
        Cmd::Audit { object, limit, .. } => admin::audit(&oc, out, object, limit).await,
        Cmd::Worker(args) => admin::worker(&oc, out, &args).await,
        // Dispatched above: the server builds its own engine.
        Cmd::Serve(_) => Err(Error::Internal("serve is dispatched before".into())),
        Cmd::Apply { files, dry_run } => commands::apply(&oc, out, &files, dry_run).await,
        Cmd::Run(args) => commands::run(&oc, out, args).await,
        Cmd::Approvals(approvals::ApprovalsCmd::List { all, limit }) => {
            approvals::list(&oc, out, all, limit).await
        }
        Cmd::Approvals(approvals::ApprovalsCmd::Show { id }) => {
            approvals::show(&oc, out, &id).await
        }
        Cmd::Approve { id, comment } => approvals::approve(&oc, out, &id, comment).await,
        Cmd::Reject { id, reason } => approvals::reject(&oc, out, &id, reason).await,
        Cmd::Exec(args) => commands::exec(&oc, out, args).await,
        Cmd::Runs(RunsCmd::List {
            job,
            status,
            schedule,
            limit,
        }) => commands::runs_list(&oc, out, job, status, limit, schedule).await,
        Cmd::Schedules(cmd) => schedules::schedules(&oc, out, cmd).await,
        Cmd::Runs(RunsCmd::Show { id }) => commands::runs_show(&oc, out, &id).await,
        Cmd::Runs(RunsCmd::Logs { id, follow }) => commands::runs_logs(&oc, out, &id, follow).await,
        Cmd::Runs(RunsCmd::Cancel { id }) => commands::runs_cancel(&oc, out, &id).await,
        Cmd::Jobs(JobsCmd::List) => commands::jobs_list(&oc, out).await,
        Cmd::Jobs(JobsCmd::Show { name, version }) => {
            commands::jobs_show(&oc, out, &name, version).await
        }
        Cmd::Jobs(JobsCmd::Versions { name }) => commands::jobs_versions(&oc, out, &name).await,
        Cmd::Targets(TargetsCmd::List) => commands::targets_list(&oc, out).await,
        Cmd::Targets(TargetsCmd::Show { name }) => commands::targets_show(&oc, out, &name).await,
        Cmd::Targets(TargetsCmd::Check {
            selector,
            concurrency,
        }) => commands::targets_check(&oc, out, &selector, concurrency).await,
        Cmd::Targets(TargetsCmd::Trust { name, yes }) => {
            commands::targets_trust(&oc, out, &name, yes).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
