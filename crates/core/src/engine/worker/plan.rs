//! A run's plan: its targets cut into batches by the job's strategy, and
//! the failure threshold that stops it. Computed from the run's spec and
//! target list alone, so the worker, a rescuer and a dry run all read the
//! same plan.

use std::ops::Range;

use crate::model::{Amount, BatchSize, JobSpec, Strategy, Threshold};

/// The batches of a run of `spec` on `n` targets, in order: one batch of
/// every target for `parallel`; for `rolling`, the `batch` sizes in turn
/// (the last one repeating), one target at a time when none is given.
pub(crate) fn batches(spec: &JobSpec, n: usize) -> Vec<Range<usize>> {
    if spec.strategy == Strategy::Parallel || n == 0 {
        // One batch holding every target (not the targets 0..n as items).
        #[allow(
            clippy::single_range_in_vec_init,
            reason = "one batch: the range of all targets"
        )]
        return vec![0..n];
    }
    let one = [BatchSize(Amount::Count(1))];
    let sizes = spec.batch.as_ref().map_or(&one[..], |b| b.0.as_slice());
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < n {
        let size = sizes[i.min(sizes.len() - 1)].of(n);
        let end = start.saturating_add(size).min(n);
        out.push(start..end);
        start = end;
        i += 1;
    }
    out
}

/// How many failed targets stop the run: the job's `max_failures`, else
/// none for `parallel` (every target goes on) and the first for `rolling`.
pub(crate) fn threshold(spec: &JobSpec) -> Option<Threshold> {
    match (spec.max_failures, spec.strategy) {
        (Some(t), _) => Some(t),
        (None, Strategy::Rolling) => Some(Threshold::FIRST),
        (None, Strategy::Parallel) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> JobSpec {
        let text = format!("kind: Job\nname: j\nsteps: [{{exec: a}}]\n{yaml}");
        crate::spec::parse_str(&text, "t.yaml", None)
            .unwrap()
            .jobs
            .remove(0)
    }

    fn sizes(spec: &JobSpec, n: usize) -> Vec<usize> {
        batches(spec, n).iter().map(|r| r.len()).collect()
    }

    #[test]
    fn parallel_is_one_batch_and_rolling_cuts_batches() {
        assert_eq!(sizes(&spec(""), 5), vec![5]);
        assert_eq!(sizes(&spec("strategy: rolling\n"), 3), vec![1, 1, 1]);
        assert_eq!(
            sizes(&spec("strategy: rolling\nbatch: 2\n"), 5),
            vec![2, 2, 1]
        );
        assert_eq!(
            sizes(&spec("strategy: rolling\nbatch: [1, 5, 25%]\n"), 20),
            vec![1, 5, 5, 5, 4]
        );
        assert_eq!(
            sizes(&spec("strategy: rolling\nbatch: 50%\n"), 3),
            vec![2, 1]
        );
        assert_eq!(
            sizes(&spec("strategy: rolling\nbatch: 100000\n"), 3),
            vec![3]
        );
        assert!(
            batches(&spec("strategy: rolling\n"), 0)
                .iter()
                .all(|b| b.is_empty())
        );
    }

    #[test]
    fn thresholds_default_by_strategy() {
        assert_eq!(threshold(&spec("")), None);
        assert_eq!(
            threshold(&spec("strategy: rolling\n")),
            Some(Threshold::FIRST)
        );
        assert_eq!(
            threshold(&spec("strategy: rolling\nmax_failures: 10%\n")),
            Some(Threshold(Amount::Percent(10)))
        );
    }
}
