//! One module per command group: parse what the user typed into engine
//! calls and print the answers.

mod apply;
mod flow;
mod jobs;
mod plan;
mod report;
mod run;
mod runs;
mod targets;

use std::time::Duration;

pub use apply::apply;
pub use jobs::{jobs_list, jobs_show, jobs_versions};
pub use run::{ExecArgs, RunArgs, exec, run};
pub use runs::{runs_cancel, runs_list, runs_logs, runs_show};
pub use targets::{targets_check, targets_list, targets_show, targets_trust};

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    opsconductor::duration::parse(s)
}
