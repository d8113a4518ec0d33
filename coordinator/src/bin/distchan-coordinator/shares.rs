//! The end of a run's summary of who did what: each worker's share of the jobs and its rate.

use distchan_coordinator::WorkerShare;

/// Workers listed one per line, the busiest first; the others are summed on one more line.
const LISTED: usize = 10;

/// Lines describing each worker's share of the jobs in `shares`, the busiest first; none
/// when no worker answered a job.
pub fn describe(shares: &[WorkerShare]) -> Vec<String> {
    let total: u64 = shares.iter().map(|s| s.done).sum();
    if total == 0 {
        return Vec::new();
    }
    let percent = |n: u64| 100.0 * n as f64 / total as f64;
    let mut busiest: Vec<&WorkerShare> = shares.iter().collect();
    busiest.sort_by(|a, b| b.done.cmp(&a.done).then(a.id.cmp(&b.id)));
    let (listed, rest) = busiest.split_at(busiest.len().min(LISTED));
    let mut lines: Vec<String> = listed
        .iter()
        .map(|s| {
            let wrong = if s.wrong > 0 {
                format!(", {} results outvoted", s.wrong)
            } else {
                String::new()
            };
            format!(
                "  worker {} ({}, {}): {} jobs ({:.1}%), {:.0} jobs/s over {:.1} s connected{wrong}",
                s.id,
                s.agent,
                s.kind,
                s.done,
                percent(s.done),
                s.rate(),
                s.connected.as_secs_f64()
            )
        })
        .collect();
    if !rest.is_empty() {
        let done = rest.iter().map(|s| s.done).sum();
        lines.push(format!(
            "  {} more workers: {done} jobs ({:.1}%)",
            rest.len(),
            percent(done)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn share(id: u64, done: u64) -> WorkerShare {
        WorkerShare {
            id,
            agent: format!("agent {id}"),
            kind: "native".into(),
            done,
            wrong: 0,
            connected: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_busiest_workers_come_first_and_the_rest_are_summed() {
        let mut shares: Vec<WorkerShare> = (1..=12).map(|id| share(id, id * 10)).collect();
        shares.push(share(13, 0));
        let lines = describe(&shares);
        assert_eq!(lines.len(), LISTED + 1);
        assert_eq!(
            lines[0],
            "  worker 12 (agent 12, native): 120 jobs (15.4%), 60 jobs/s over 2.0 s connected"
        );
        assert!(lines[9].starts_with("  worker 3 "), "{}", lines[9]);
        assert_eq!(lines[10], "  3 more workers: 30 jobs (3.8%)");
        assert!(describe(&[share(1, 0)]).is_empty(), "no jobs, no lines");
    }

    #[test]
    fn a_worker_outvoted_says_how_often() {
        let liar = WorkerShare {
            wrong: 7,
            ..share(2, 9)
        };
        let lines = describe(&[share(1, 10), liar]);
        assert_eq!(
            lines[1],
            "  worker 2 (agent 2, native): 9 jobs (47.4%), 4 jobs/s over 2.0 s connected, 7 results outvoted"
        );
    }
}
