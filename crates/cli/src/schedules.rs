//! `opsconductor schedules …`: list, show, pause, resume, run-now, next, delete.

use clap::Subcommand;
use opsconductor::{Actor, Conductor, Error};

use crate::exit;
use crate::output::Out;

/// `schedules` subcommands.
#[derive(Subcommand, Debug)]
pub enum SchedulesCmd {
    /// List schedules with their state and next fire time.
    List,
    /// Show a schedule and its newest fire times (what became of each).
    Show {
        /// Schedule name.
        name: String,
    },
    /// Stop a schedule firing (kept across re-applies of its file).
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Resume a paused schedule from now (times missed while paused do not run).
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Run the schedule's job now with its parameters and targets.
    RunNow {
        /// Schedule name.
        name: String,
    },
    /// Print the next fire times, in UTC and in the schedule's time zone.
    Next {
        /// Schedule name.
        name: String,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Delete a schedule (its runs and fire records stay).
    Delete {
        /// Schedule name.
        name: String,
    },
}

pub async fn schedules(oc: &Conductor, out: &Out, cmd: SchedulesCmd) -> Result<u8, Error> {
    let me = Actor::local_user();
    match cmd {
        SchedulesCmd::List => {
            let all = oc.schedules(&me).await?;
            if out.json {
                out.json(&all);
                return Ok(exit::OK);
            }
            if all.is_empty() {
                out.note("no schedules yet — add `kind: Schedule` documents and `opsconductor apply -f FILE` (see examples/schedules/)");
                return Ok(exit::OK);
            }
            let rows = all
                .iter()
                .map(|d| {
                    let s = &d.schedule.spec;
                    vec![
                        s.name.clone(),
                        match s.version {
                            Some(v) => format!("{}@{v}", s.job),
                            None => s.job.clone(),
                        },
                        s.cron.clone(),
                        s.timezone.clone(),
                        d.state.to_string(),
                        d.next_fire_local.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.table(
                &["NAME", "JOB", "CRON", "TIMEZONE", "STATE", "NEXT FIRE"],
                rows,
            );
        }
        SchedulesCmd::Show { name } => {
            let d = oc.schedule(&name, &me).await?;
            if out.json {
                out.json(&d);
                return Ok(exit::OK);
            }
            let s = &d.schedule.spec;
            let kv = |k: &str, v: String| println!("{} {v}", out.bold(&format!("{k:<11}")));
            kv("Schedule:", s.name.clone());
            kv(
                "Job:",
                match s.version {
                    Some(v) => format!("{} (version {v})", s.job),
                    None => format!("{} (latest version)", s.job),
                },
            );
            kv("Cron:", format!("{} ({})", s.cron, s.timezone));
            kv("State:", d.state.to_string());
            kv(
                "Next fire:",
                d.next_fire_local.clone().unwrap_or_else(|| "-".into()),
            );
            kv(
                "Policies:",
                format!(
                    "misfire {}, overlap {}",
                    s.misfire.as_str(),
                    s.overlap.as_str()
                ),
            );
            if let Some(t) = s.start {
                kv("Start:", t.to_rfc3339());
            }
            if let Some(t) = s.end {
                kv("End:", t.to_rfc3339());
            }
            if !s.params.is_null() {
                kv(
                    "Params:",
                    serde_json::to_string(&s.params).unwrap_or_default(),
                );
            }
            if let Some(t) = &s.targets {
                kv("Targets:", t.join(", "));
            }
            kv(
                "Owner:",
                format!(
                    "{} ({})",
                    d.schedule.owner,
                    d.schedule
                        .owner_role
                        .map(|r| r.as_str())
                        .unwrap_or("trusted")
                ),
            );
            if !d.recent.is_empty() {
                println!();
                let rows = d
                    .recent
                    .iter()
                    .map(|f| {
                        vec![
                            f.fire_time.to_rfc3339(),
                            f.outcome.as_str().to_string(),
                            f.run_id.map(|r| r.to_string()).unwrap_or_default(),
                            f.detail.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                out.table(&["FIRE TIME (UTC)", "OUTCOME", "RUN", "DETAIL"], rows);
            }
        }
        SchedulesCmd::Pause { name } => {
            let s = oc.pause_schedule(&name, &me).await?;
            if out.json {
                out.json(&s);
            } else {
                out.note(&format!("schedule '{name}' paused"));
            }
        }
        SchedulesCmd::Resume { name } => {
            let s = oc.resume_schedule(&name, &me).await?;
            if out.json {
                out.json(&s);
            } else {
                out.note(&format!(
                    "schedule '{name}' resumed; next fire {}",
                    s.next_fire
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "none (ended)".into())
                ));
            }
        }
        SchedulesCmd::RunNow { name } => {
            let run = oc.run_schedule_now(&name, &me).await?;
            if out.json {
                out.json(&run);
            } else {
                println!("{}", run.id);
                out.note(&format!(
                    "queued run {} of job '{}' (a worker or `opsconductor serve` runs it)",
                    run.id, run.job
                ));
            }
        }
        SchedulesCmd::Next { name, count } => {
            let times = oc.next_fire_times(&name, count, &me).await?;
            if out.json {
                out.json(&times);
                return Ok(exit::OK);
            }
            let d = oc.schedule(&name, &me).await?;
            let timing = d.schedule.spec.timing()?;
            for t in times {
                println!("{}  {}", t.to_rfc3339(), timing.local(t));
            }
        }
        SchedulesCmd::Delete { name } => {
            oc.delete_schedule(&name, &me).await?;
            out.note(&format!("schedule '{name}' deleted"));
        }
    }
    Ok(exit::OK)
}
