//! `distchan-coordinator serve --queue nats://HOST:PORT`: one of several coordinators
//! sharing a durable queue on NATS JetStream (see [`distchan_coordinator::jetstream`]).
//!
//! Jobs (JSON text, put there by `distchan-submit`) are pulled from the shared consumer and
//! handed to this coordinator's workers; each result is published to the subject its job
//! names and, once the broker has stored it, the job is acknowledged. A job whose result is
//! not stored (this process dies, the broker is away) is delivered again after the ack
//! wait, to whichever coordinator pulls next. The jobs held here are kept alive with
//! progress acknowledgements, so a long job is not computed twice.
//!
//! Runs until Ctrl-C or SIGTERM: then it pulls no more jobs, finishes the ones it holds,
//! stores their results and exits 0. A second signal quits at once (the jobs held here
//! are delivered again elsewhere).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    context::PublishAckFuture,
    message::{AckKind, Acker},
};
use clap::Args;
use distchan_coordinator::{
    jetstream::{self, Link, QueueArgs, QueueSettings, JOB_HEADER, REPLY_HEADER},
    Error, JobSender, TaskModule,
};
use distchan_protocol::{logging::notice, tasks};
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::{
    announce,
    json::{task_of, JsonText, ResultJson},
    pipe::RunEnd,
    ServerArgs,
};

/// Jobs asked of the broker per pull.
const BATCH: usize = 256;
/// Results handled per turn.
const GROUP: usize = 1024;
/// Results published whose storage the broker has not confirmed yet, at most.
const UNCONFIRMED: usize = 4096;

/// Options of serve mode.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The built-in task the workers run on each job (or give a task module with `--module`).
    /// Every coordinator of one queue must run the same.
    #[arg(long, env = "DISTCHAN_TASK", value_parser = clap::builder::PossibleValuesParser::new(tasks::ALL))]
    pub task: Option<String>,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// A job pulled from the queue and handed to a worker: what its result needs.
struct Held {
    /// The job's id (`RUN.LINE`).
    job: String,
    /// The subject its result goes to.
    reply: String,
    /// Acknowledges it once its result is stored.
    acker: Acker,
}

/// What the puller tells the result loop.
enum Pulled {
    /// Job `id` went to the workers.
    Sent(u64, Held),
    /// A job that cannot run (its payload is not JSON): answered with this error at once.
    Refused(Held, String),
}

/// Runs serve mode.
pub async fn run(server: &ServerArgs, args: &ServeArgs) -> Result<RunEnd, Error> {
    let task = task_of(server, args.task.as_deref())?;
    let mut settings = args.queue.settings(server.max_retries);
    settings.work = match &server.module {
        Some(path) => format!("module {}", TaskModule::from_file(path)?.sha256()),
        None => format!("task {task}"),
    };
    let (link, _streams) = Link::open(&settings).await?;
    let link = Arc::new(link);
    let consumer = jetstream::coordinator_consumer(&link.context(), &settings).await?;

    let listener = tokio::net::TcpListener::bind(&server.listen).await?;
    let (coordinator, jobs, mut results) = server
        .builder(task)?
        .listen::<JsonText, ResultJson>(listener)?;
    let _local = announce(&coordinator, server, true);
    let me = coordinator.local_addr().to_string();
    notice(
        Level::INFO,
        format_args!(
            "serve: taking jobs from {} (stream {}, consumer {}, ack wait {} ms, at most {} deliveries)",
            settings.url,
            settings.jobs_stream,
            settings.consumer,
            settings.ack_wait.as_millis(),
            settings.max_deliver
        ),
    );

    let stop = CancellationToken::new();
    let signals = watch_signals(stop.clone());
    let (pulled_tx, mut pulled) = mpsc::unbounded_channel();
    let puller = tokio::spawn(pull(
        consumer,
        link.clone(),
        jobs,
        pulled_tx,
        stop.clone(),
        settings.clone(),
    ));
    let (confirm_tx, confirm_rx) = mpsc::channel(UNCONFIRMED);
    let confirmer = tokio::spawn(confirm(confirm_rx, link.clone()));
    let publisher = Publisher {
        link,
        me,
        confirm: confirm_tx,
    };

    let mut ledger = Ledger::default();
    let mut keep_alive = tokio::time::interval(settings.ack_wait / 3);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(GROUP);
    loop {
        tokio::select! {
            biased;
            Some(p) = pulled.recv() => ledger.pulled(p, &publisher).await,
            n = results.recv_many(&mut batch, GROUP) => {
                if n == 0 {
                    break;
                }
                for outcome in batch.drain(..) {
                    let answer = match outcome.result {
                        Ok(value) => Ok(value.0),
                        Err(e) => Err(e.to_string()),
                    };
                    ledger.answered(outcome.id.0, answer, &publisher).await;
                }
            }
            _ = keep_alive.tick() => {
                for h in ledger.held.values() {
                    // Best effort: a lost one costs a second delivery, never a lost job.
                    let _ = h.acker.ack_with(AckKind::Progress).await;
                }
            }
        }
    }
    // Every job sent is answered; the puller's last words find their results here.
    while let Some(p) = pulled.recv().await {
        ledger.pulled(p, &publisher).await;
    }
    let Ledger {
        answered, failed, ..
    } = ledger;
    signals.abort();
    let pulled_total = match puller.await {
        Ok(result) => result?,
        Err(e) => return Err(Error::config(format!("the queue reader failed: {e}"))),
    };
    drop(publisher);
    let unconfirmed = confirmer.await.unwrap_or(0);
    coordinator.shutdown().await;
    notice(
        Level::INFO,
        format_args!(
            "serve: {pulled_total} jobs taken from the queue, {answered} answered ({failed} with an error){}",
            if unconfirmed > 0 {
                format!("; {unconfirmed} results were not confirmed stored: their jobs will be delivered again")
            } else {
                String::new()
            }
        ),
    );
    Ok(RunEnd::Success)
}

/// The jobs held here, by the id this coordinator gave them.
#[derive(Default)]
struct Ledger {
    held: HashMap<u64, Held>,
    /// Results that came back before the puller said whose they are.
    early: HashMap<u64, Result<String, String>>,
    answered: u64,
    failed: u64,
}

impl Ledger {
    /// What the puller did with a message.
    async fn pulled(&mut self, pulled: Pulled, publisher: &Publisher) {
        match pulled {
            Pulled::Sent(id, held) => match self.early.remove(&id) {
                Some(answer) => self.publish(held, answer, publisher).await,
                None => {
                    self.held.insert(id, held);
                }
            },
            Pulled::Refused(held, reason) => self.publish(held, Err(reason), publisher).await,
        }
    }

    /// Job `id`'s outcome came back from the workers.
    async fn answered(&mut self, id: u64, answer: Result<String, String>, publisher: &Publisher) {
        match self.held.remove(&id) {
            Some(held) => self.publish(held, answer, publisher).await,
            None => {
                self.early.insert(id, answer);
            }
        }
    }

    async fn publish(&mut self, held: Held, answer: Result<String, String>, publisher: &Publisher) {
        self.answered += 1;
        self.failed += u64::from(answer.is_err());
        publisher.publish(held, answer).await;
    }
}

/// Publishes results; their confirmations are awaited (and their jobs acknowledged) by
/// [`confirm`].
struct Publisher {
    link: Arc<Link>,
    me: String,
    confirm: mpsc::Sender<(PublishAckFuture, Acker, String)>,
}

impl Publisher {
    async fn publish(&self, held: Held, answer: Result<String, String>) {
        let mut payload = jetstream::result_payload(answer.as_deref().map_err(String::as_str));
        let largest = self.link.context().client().server_info().max_payload;
        if payload.len() + jetstream::HEADROOM > largest {
            // Its job would come back again and again: it is answered with the reason.
            payload = jetstream::result_payload(Err(&format!(
                "the result is {} bytes, more than the queue takes in one message ({largest} bytes: the broker's max_payload)",
                payload.len()
            )));
        }
        let message = jetstream::result_message(&held.job, payload, &self.me);
        match self.link.context().send_publish(held.reply, message).await {
            Ok(stored) => {
                let _ = self.confirm.send((stored, held.acker, held.job)).await;
            }
            // Not acknowledged: the broker delivers the job again after the ack wait.
            Err(e) => notice(
                Level::WARN,
                format_args!(
                    "serve: the result of {} could not be published ({e}); the job will be delivered again",
                    held.job
                ),
            ),
        }
    }
}

/// Acknowledges each job once the broker confirms its result is stored, in publish order.
/// A result not confirmed leaves its job to be delivered again, and the connection is
/// renewed. Returns how many results were not confirmed.
async fn confirm(
    mut stored: mpsc::Receiver<(PublishAckFuture, Acker, String)>,
    link: Arc<Link>,
) -> u64 {
    let mut unconfirmed = 0;
    let mut said = Said::default();
    while let Some((confirmation, acker, job)) = stored.recv().await {
        match confirmation.await {
            // Not acknowledged: delivered again, its second result dropped as a duplicate.
            Ok(_) => {
                if let Err(e) = acker.ack().await {
                    said.warn(format_args!(
                        "could not acknowledge {job} ({e}): it will be delivered again"
                    ));
                }
            }
            // The broker is away or the connection broken: the results published after
            // this one are not awaited in turn (each wait would start only then), their jobs
            // are left to be delivered again too, and the connection is renewed.
            Err(e) => {
                let mut dropped = 1;
                while stored.try_recv().is_ok() {
                    dropped += 1;
                }
                unconfirmed += dropped;
                said.warn(format_args!(
                    "the result of {job} and {} after it were not confirmed stored ({e}): their jobs will be delivered again",
                    dropped - 1
                ));
                link.renew().await;
            }
        }
    }
    unconfirmed
}

/// Warnings of one kind, said at most once a second with how many there were.
#[derive(Default)]
struct Said {
    last: Option<Instant>,
    quiet: u64,
}

impl Said {
    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            self.quiet += 1;
            return;
        }
        let more = match std::mem::take(&mut self.quiet) {
            0 => String::new(),
            n => format!(" (and {n} more like it)"),
        };
        notice(Level::WARN, format_args!("serve: {what}{more}"));
        self.last = Some(Instant::now());
    }
}

/// Pulls jobs from the shared consumer and sends them to the workers until `stop`; a
/// broken pull (the broker restarting, say) is started again. Returns how many jobs it took.
async fn pull(
    mut consumer: async_nats::jetstream::consumer::Consumer<
        async_nats::jetstream::consumer::pull::Config,
    >,
    link: Arc<Link>,
    jobs: JobSender<JsonText>,
    pulled: mpsc::UnboundedSender<Pulled>,
    stop: CancellationToken,
    settings: QueueSettings,
) -> Result<u64, Error> {
    let mut taken = 0u64;
    let reply_prefix = format!("{}.", settings.results_prefix);
    let pause = Duration::from_millis(250);
    let mut renewed = link.watch();
    let mut reconnected = link.reconnects();
    let mut failures = 0u32;
    'pulls: loop {
        if renewed.has_changed().unwrap_or(false) {
            let js = renewed.borrow_and_update().clone();
            match jetstream::coordinator_consumer(&js, &settings).await {
                Ok(fresh) => consumer = fresh,
                Err(e) => tracing::warn!(error = %e, "the shared consumer on the fresh connection"),
            }
        }
        // Pulls that keep failing get a fresh connection.
        if failures >= 3 {
            failures = 0;
            tokio::select! {
                () = stop.cancelled() => break,
                _ = link.renew() => continue,
            }
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot pull jobs; trying again");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => break 'pulls,
                _ = renewed.changed() => continue 'pulls,
                // The broker restarted: pull anew rather than wait for heartbeats to be missed.
                _ = reconnected.changed() => {
                    reconnected.borrow_and_update();
                    continue 'pulls;
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => {
                    failures = 0;
                    message
                }
                // A broken pull (the broker restarting, say) is started again.
                Some(Err(e)) => {
                    failures += 1;
                    tracing::debug!(error = %e, "pulling jobs");
                    tokio::select! {
                        () = stop.cancelled() => break 'pulls,
                        () = tokio::time::sleep(pause) => continue 'pulls,
                    }
                }
                None => continue 'pulls,
            };
            let (message, acker) = message.split();
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let (Some(job), Some(reply)) = (header(JOB_HEADER), header(REPLY_HEADER)) else {
                notice(
                    Level::WARN,
                    format_args!("serve: a message on {} has no {JOB_HEADER} or {REPLY_HEADER} header: not a job, dropped", message.subject),
                );
                let _ = acker.ack_with(AckKind::Term).await;
                continue;
            };
            if !reply.starts_with(&reply_prefix) {
                notice(
                    Level::WARN,
                    format_args!("serve: job {job} wants its result on {reply}, outside {reply_prefix}*: dropped"),
                );
                let _ = acker.ack_with(AckKind::Term).await;
                continue;
            }
            taken += 1;
            let held = Held { job, reply, acker };
            let text = std::str::from_utf8(&message.payload)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<IgnoredAny>(t)
                        .map(|_| t)
                        .map_err(|e| e.to_string())
                });
            let event = match text {
                Ok(text) => {
                    let id = jobs.send(JsonText(text.to_owned())).await?;
                    Pulled::Sent(id.0, held)
                }
                Err(e) => Pulled::Refused(held, format!("the job is not JSON: {e}")),
            };
            if pulled.send(event).is_err() {
                break 'pulls;
            }
        }
    }
    Ok(taken) // dropping `jobs` here means "no more work"
}

/// The first Ctrl-C or SIGTERM stops pulling; a second one quits at once.
fn watch_signals(stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        if next_signal(&mut term).await {
            notice(
                Level::INFO,
                "serve: stopping: no more jobs are pulled; the jobs held here are finished (again to quit now)",
            );
            stop.cancel();
            if next_signal(&mut term).await {
                notice(
                    Level::WARN,
                    "serve: quitting now; the jobs held here will be delivered to another coordinator",
                );
                std::process::exit(130);
            }
        }
    })
}

/// Waits for Ctrl-C or SIGTERM.
async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) -> bool {
    let sigterm = async {
        match term.as_mut() {
            Some(t) => t.recv().await.is_some(),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.is_ok(),
        got = sigterm => got,
    }
}
