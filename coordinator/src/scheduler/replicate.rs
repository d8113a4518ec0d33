//! Replication, for volunteers who may return wrong results: with
//! [`Config::replicas`](crate::Config::replicas) above 1, each result of a job is a vote.
//! The job is delivered once `replicas` distinct workers gave the same result (byte for
//! byte; errors by their message), and goes to one more worker while they do not (dispatch
//! never gives it to a worker that voted). After `2 × replicas + 1` votes without such an
//! agreement it fails. Workers whose vote lost are counted and, past
//! [`Config::max_wrong`](crate::Config::max_wrong), disconnected.

use std::time::Duration;

use bytes::Bytes;
use distchan_protocol::{wire::CLOSE_POLICY, JobId};
use tokio::time::Instant;

use super::{hub::Wakes, ledger::Vote, Scheduler, WorkerId};
use crate::{connection::Outgoing, JobError};

/// What replication keeps between jobs.
#[derive(Debug, Default)]
pub(super) struct Replication {
    /// The groups of the workers cut off for wrong results: they may not join again.
    pub(super) cut_off: rustc_hash::FxHashSet<std::sync::Arc<str>>,
    /// True while replicated jobs wait for more groups of workers than are connected (said
    /// once), and when that was last looked at.
    few_groups_said: bool,
    groups_checked_at: Option<Instant>,
}

/// What the votes of a job say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Enough workers agree with the last vote: its result wins.
    Agreed,
    /// Too many votes and still no agreement: the job fails.
    NoAgreement,
    /// One more worker must vote.
    More,
}

/// Judges `votes` (in order; only the last one is new) for `replicas` agreeing workers.
fn verdict(votes: &[Vote], replicas: usize) -> Verdict {
    let Some(last) = votes.last() else {
        return Verdict::More;
    };
    let agreeing = votes.iter().filter(|v| v.outcome == last.outcome).count();
    if agreeing >= replicas {
        Verdict::Agreed
    } else if votes.len() > 2 * replicas {
        Verdict::NoAgreement
    } else {
        Verdict::More
    }
}

impl Scheduler {
    /// Takes `worker`'s result for job `id` (still in the table) as a vote and counts the
    /// votes: delivers the result enough workers agree on (the others' votes counted
    /// wrong), fails the job when too many disagree, or has it wait for one more worker.
    ///
    /// Never inlined into the settling of a result, which most runs (without replicas) take
    /// millions of times a second: inlined, it slowed them by a third in the benchmark.
    #[cold]
    #[inline(never)]
    pub(super) fn vote(
        &mut self,
        id: JobId,
        worker: WorkerId,
        outcome: Result<Bytes, String>,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        let group = self.workers.group(worker);
        let vote = Vote {
            worker,
            group,
            outcome,
        };
        if !self.ledger.add_vote(id, vote) {
            return;
        }
        let replicas = self.config.replicas as usize;
        let votes = self.ledger.votes(id);
        match verdict(votes, replicas) {
            Verdict::More => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.done += 1;
                }
                self.check_groups(now);
                // A superseded run's vote leaves the job where it is (running elsewhere, or
                // already waiting).
                if self.ledger.wait_again(id, worker) {
                    self.queue.requeue_front(vec![id]);
                }
            }
            verdict => {
                let mut entry = self.ledger.take(id).expect("voted jobs are in the table");
                let mut votes = std::mem::take(&mut entry.votes);
                self.close_entry(id, entry, worker, now, wakes);
                let outcome = if verdict == Verdict::Agreed {
                    let won = votes.pop().expect("a vote was just added").outcome;
                    for lost in votes.iter().filter(|v| v.outcome != won) {
                        self.tallies.wrong += 1;
                        self.mark_wrong(lost.worker, wakes);
                    }
                    won.map_err(JobError::Failed)
                } else {
                    Err(JobError::Disagreement {
                        votes: votes.len() as u32,
                    })
                };
                self.deliver(id, Some(worker), outcome, wakes);
            }
        }
    }

    /// Counts a lost vote against worker `wid`; past `max_wrong`, it gets no more jobs and
    /// is disconnected (its jobs go to others when its connection ends).
    fn mark_wrong(&mut self, wid: WorkerId, wakes: &mut Wakes) {
        let max_wrong = self.config.max_wrong;
        let Some(w) = self.workers.get_mut(wid) else {
            return; // it left meanwhile
        };
        w.wrong += 1;
        if max_wrong.is_none_or(|max| w.wrong != max + 1) {
            return;
        }
        tracing::warn!(
            worker = wid,
            agent = %w.agent,
            addr = %w.addr,
            wrong = w.wrong,
            "a worker's results lost to the other workers' too often; disconnecting it"
        );
        // Its group (the other tabs and threads of its browser) goes with it, and may not
        // come back during this run.
        let group = w.group.clone();
        let mut cut = vec![wid];
        if let Some(group) = group {
            cut.extend(
                self.workers
                    .iter()
                    .filter(|(&other, w)| other != wid && w.group.as_ref() == Some(&group))
                    .map(|(&other, _)| other),
            );
            self.replication.cut_off.insert(group);
        }
        for wid in cut {
            if let Some(w) = self.workers.drain(wid) {
                w.send(
                    Outgoing::Close {
                        code: CLOSE_POLICY,
                        reason: "too many results the other workers disagreed with".into(),
                    },
                    wakes,
                );
            }
        }
    }

    /// Says once, while it lasts, that replicated jobs wait for more groups of workers than
    /// are connected (a run with `--replicas 2` and one worker would wait without a word).
    /// Looks at most once a second: counting the groups goes over every worker.
    fn check_groups(&mut self, now: Instant) {
        if self
            .replication
            .groups_checked_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.replication.groups_checked_at = Some(now);
        let replicas = self.config.replicas as usize;
        let groups = self.workers.groups();
        if groups >= replicas {
            self.replication.few_groups_said = false;
        } else if !self.replication.few_groups_said {
            self.replication.few_groups_said = true;
            tracing::warn!(
                replicas,
                groups,
                "replicated jobs wait: each needs {replicas} workers of distinct groups; \
                 groups connected now: {groups}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn votes(outcomes: &[Result<&'static str, &str>]) -> Vec<Vote> {
        outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| Vote {
                worker: i as WorkerId,
                group: None,
                outcome: o
                    .map(|t| Bytes::from_static(t.as_bytes()))
                    .map_err(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn a_result_wins_once_enough_workers_agree_byte_for_byte() {
        assert_eq!(verdict(&votes(&[Ok("a")]), 2), Verdict::More);
        assert_eq!(verdict(&votes(&[Ok("a"), Ok("a")]), 2), Verdict::Agreed);
        assert_eq!(verdict(&votes(&[Ok("a"), Ok("A")]), 2), Verdict::More);
        assert_eq!(
            verdict(&votes(&[Ok("a"), Ok("b"), Ok("a")]), 2),
            Verdict::Agreed
        );
        assert_eq!(verdict(&votes(&[Err("x"), Err("x")]), 2), Verdict::Agreed);
        assert_eq!(verdict(&votes(&[Err("x"), Err("y")]), 2), Verdict::More);
        assert_eq!(
            verdict(&votes(&[Ok("a"), Ok("a"), Ok("b")]), 3),
            Verdict::More
        );
        assert_eq!(
            verdict(&votes(&[Ok("a"), Ok("b"), Ok("c"), Ok("d")]), 2),
            Verdict::More
        );
        assert_eq!(
            verdict(&votes(&[Ok("a"), Ok("b"), Ok("c"), Ok("d"), Ok("e")]), 2),
            Verdict::NoAgreement,
            "five votes for two replicas and no two agree"
        );
    }
}
