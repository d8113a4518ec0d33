//! Several coordinators sharing one durable queue on NATS JetStream (feature `jetstream`).
//!
//! Producers publish jobs into a work-queue stream; every coordinator pulls from one
//! durable consumer of it, hands the jobs to its own workers, publishes each result into a
//! result stream and only then acknowledges the job. What the streams, subjects and headers
//! are is decided here, once, for both sides: `distchan-coordinator serve --queue` (the
//! coordinators) and `distchan-submit` (the producers that also collect the results).
//!
//! ```text
//! producers ──> [jobs stream, work queue] ──> coordinators ──> workers
//!     ^                                           │
//!     └──────────── [results stream] <────────────┘
//! ```
//!
//! # Delivery
//!
//! - A job is acknowledged only after its result is stored in the results stream, so a
//!   coordinator that dies (or loses the broker) with jobs in hand leaves them to be
//!   delivered again, after the consumer's ack wait, to any coordinator.
//! - A coordinator keeps the jobs it holds alive (a progress acknowledgement every third of
//!   the ack wait), so a long job is not delivered twice while it is being computed.
//! - Each job is delivered at most `max_deliver` times; a job that reaches it unanswered is
//!   announced by the broker (an advisory the submitter turns into an error result).
//! - A result is published with the job's id as its message id, so the results stream drops
//!   a second copy within its duplicate window, and the submitter keeps the first result per
//!   job whatever the window: exactly one result per job reaches the output.
//!
//! # Example
//!
//! ```no_run
//! use distchan_coordinator::jetstream::{self, QueueSettings};
//!
//! # async fn demo() -> Result<(), distchan_coordinator::Error> {
//! let settings = QueueSettings::new("nats://127.0.0.1:4222");
//! let (link, _streams) = jetstream::Link::open(&settings).await?;
//! let job = jetstream::job_message("run-1", 1, "\"hello\"".into(), &settings);
//! let stored = link
//!     .context()
//!     .send_publish(settings.jobs_subject.clone(), job)
//!     .await
//!     .map_err(jetstream::error)?;
//! stored.await.map_err(jetstream::error)?; // the broker has it
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_nats::jetstream::{
    self as js,
    consumer::{pull, AckPolicy},
    context::Context,
    message::PublishMessage,
    stream::{self, RetentionPolicy, StorageType},
};
use bytes::Bytes;

use crate::Error;

pub use async_nats::jetstream::Context as JetStream;

/// Bytes kept for a message's headers when its payload is checked against the broker's
/// largest message (`max_payload`).
pub const HEADROOM: usize = 1024;

/// Header naming the job a message is about: `RUN.LINE` (the run's id and the job's number
/// in it).
pub const JOB_HEADER: &str = "Distchan-Job";
/// Header of a job naming the subject its result goes to.
pub const REPLY_HEADER: &str = "Distchan-Reply";
/// Header of a result naming the coordinator that computed it (its worker address).
pub const COORDINATOR_HEADER: &str = "Distchan-Coordinator";

/// Where the queue is and what its parts are called. Every coordinator and submitter of one
/// project must agree on these (the defaults do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The work-queue stream jobs wait in.
    pub jobs_stream: String,
    /// The subject jobs are published to.
    pub jobs_subject: String,
    /// The stream results are stored in.
    pub results_stream: String,
    /// Results of run `R` are published to `<results_prefix>.R`.
    pub results_prefix: String,
    /// The durable consumer the coordinators share.
    pub consumer: String,
    /// How long a delivered job may go without an acknowledgement (or a progress
    /// acknowledgement) before the broker delivers it again.
    pub ack_wait: Duration,
    /// Deliveries of one job at most (a coordinator lost with the job in hand costs one).
    pub max_deliver: i64,
    /// How long results stay in the results stream when no submitter removes them.
    pub results_max_age: Duration,
    /// What the coordinators run on every job (e.g. `task capitalize`, `module <sha256>`),
    /// written on the shared consumer by the first coordinator: one that runs something
    /// else is refused. Empty: not checked.
    pub work: String,
}

impl QueueSettings {
    /// The default names, on the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        QueueSettings {
            url: url.into(),
            jobs_stream: "DISTCHAN_JOBS".into(),
            jobs_subject: "distchan.jobs".into(),
            results_stream: "DISTCHAN_RESULTS".into(),
            results_prefix: "distchan.results".into(),
            consumer: "distchan-coordinators".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 4,
            results_max_age: Duration::from_secs(24 * 3600),
            work: String::new(),
        }
    }

    /// The subject the results of run `run` are published to.
    pub fn results_subject(&self, run: &str) -> String {
        format!("{}.{run}", self.results_prefix)
    }

    /// The subject on which the broker announces a job of the shared consumer that reached
    /// `max_deliver` deliveries without an acknowledgement.
    pub fn max_deliveries_subject(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            self.jobs_stream, self.consumer
        )
    }
}

/// A NATS error as ours, saying it came from the queue.
pub fn error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::connection_from("the queue (NATS JetStream)", e)
}

/// Connects to the server in `settings` (the client reconnects by itself afterwards).
pub async fn connect(settings: &QueueSettings) -> Result<Context, Error> {
    connect_counting(settings, tokio::sync::watch::channel(0).0).await
}

/// [`connect`], counting in `connections` each time the connection is made (again): a
/// consumer the broker kept only in memory is gone after the broker restarted, and whoever
/// reads one must make it anew then.
async fn connect_counting(
    settings: &QueueSettings,
    connections: tokio::sync::watch::Sender<u64>,
) -> Result<Context, Error> {
    let url = settings.url.clone();
    let client = async_nats::ConnectOptions::new()
        .name("distchan")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (connections, url) = (connections.clone(), url.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%url, "connected to the queue");
                        connections.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%url, "disconnected from the queue; reconnecting")
                    }
                    other => tracing::info!(%url, "queue connection: {other}"),
                }
            }
        })
        .connect(settings.url.as_str())
        .await
        .map_err(|e| {
            Error::connection_from(format!("cannot reach the queue at {}", settings.url), e)
        })?;
    Ok(js::new(client))
}

/// A connection to the queue that is replaced by a fresh one when it stops working.
///
/// The NATS client reconnects by itself after a broker restart, but a connection that came
/// back while the broker was still recovering its streams may go on without answers (every
/// publish waiting for a confirmation that never comes, pulls that bring nothing). A side
/// that sees that calls [`Link::renew`]: a new connection is made (retried until it works),
/// the streams checked, and everyone holding a [`Link::watch`] is told to move to it.
#[derive(Debug)]
pub struct Link {
    settings: QueueSettings,
    current: tokio::sync::watch::Sender<Context>,
    connections: tokio::sync::watch::Sender<u64>,
    renewed: tokio::sync::Mutex<std::time::Instant>,
}

impl Link {
    /// Connects (once: an unreachable queue at start is an error) and checks the streams.
    pub async fn open(settings: &QueueSettings) -> Result<(Link, Streams), Error> {
        let connections = tokio::sync::watch::channel(0).0;
        let js = connect_counting(settings, connections.clone()).await?;
        let streams = ensure_streams(&js, settings).await?;
        let link = Link {
            settings: settings.clone(),
            current: tokio::sync::watch::channel(js).0,
            connections,
            renewed: tokio::sync::Mutex::new(std::time::Instant::now()),
        };
        Ok((link, streams))
    }

    /// The current connection.
    pub fn context(&self) -> Context {
        self.current.borrow().clone()
    }

    /// Tells when the connection is replaced.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Context> {
        self.current.subscribe()
    }

    /// Tells when a connection is made again (the client reconnected, or [`Link::renew`]).
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.subscribe()
    }

    /// Replaces the connection with a fresh one, unless it was replaced in the last five
    /// seconds (many failures of one outage make one renewal); tries until it works.
    pub async fn renew(&self) -> Context {
        let mut renewed = self.renewed.lock().await;
        if renewed.elapsed() < Duration::from_secs(5) {
            return self.context();
        }
        let mut pause = Duration::from_millis(250);
        loop {
            let fresh = match connect_counting(&self.settings, self.connections.clone()).await {
                Ok(js) => ensure_streams(&js, &self.settings).await.map(|_| js),
                Err(e) => Err(e),
            };
            match fresh {
                Ok(js) => {
                    tracing::info!(url = %self.settings.url, "a fresh connection to the queue");
                    self.current.send_replace(js.clone());
                    *renewed = std::time::Instant::now();
                    return js;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the queue is not reachable yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The jobs and results streams, made if they do not exist yet.
#[derive(Debug)]
pub struct Streams {
    /// The work-queue stream of jobs.
    pub jobs: stream::Stream,
    /// The stream of results.
    pub results: stream::Stream,
}

/// Makes the two streams if they are missing (an existing stream is used as it is).
pub async fn ensure_streams(js: &Context, settings: &QueueSettings) -> Result<Streams, Error> {
    let jobs = get_or_create(
        js,
        stream::Config {
            name: settings.jobs_stream.clone(),
            subjects: vec![settings.jobs_subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await?;
    let results = get_or_create(
        js,
        stream::Config {
            name: settings.results_stream.clone(),
            subjects: vec![format!("{}.>", settings.results_prefix)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_age: settings.results_max_age,
            ..Default::default()
        },
    )
    .await?;
    Ok(Streams { jobs, results })
}

/// The stream `config` names, made if it does not exist. Coordinators (and submitters)
/// that start together on a new broker all find it missing and all make it; the broker
/// may refuse all but one of them, saying the subjects overlap with the stream made
/// meanwhile. The others then take that stream; without one of that name, the refusal
/// stands.
async fn get_or_create(js: &Context, config: stream::Config) -> Result<stream::Stream, Error> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(stream) => Ok(stream),
        Err(refused) => js.get_stream(&name).await.map_err(|_| error(refused)),
    }
}

/// The durable pull consumer every coordinator takes jobs from (made if missing). It
/// names what its coordinators run ([`QueueSettings::work`]); a coordinator that runs
/// something else is refused with both names, since it would answer the others' jobs with
/// its own task.
pub async fn coordinator_consumer(
    js: &Context,
    settings: &QueueSettings,
) -> Result<js::consumer::Consumer<pull::Config>, Error> {
    let description = format!("distchan coordinators running {}", settings.work);
    let consumer = js
        .get_stream(&settings.jobs_stream)
        .await
        .map_err(error)?
        .get_or_create_consumer(
            &settings.consumer,
            pull::Config {
                durable_name: Some(settings.consumer.clone()),
                description: Some(description.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: settings.max_deliver,
                max_ack_pending: 1 << 20,
                ..Default::default()
            },
        )
        .await
        .map_err(error)?;
    let theirs = consumer.cached_info().config.description.as_deref();
    match theirs.and_then(|d| d.strip_prefix("distchan coordinators running ")) {
        Some(work) if !settings.work.is_empty() && !work.is_empty() && work != settings.work => {
            Err(Error::config(format!(
                "the coordinators of the queue's consumer {} run {work}, and this one runs {}: \
                 every coordinator of one queue must run the same (or give this one its own \
                 --jobs-stream, --jobs-subject and --consumer)",
                settings.consumer, settings.work
            )))
        }
        _ => Ok(consumer),
    }
}

/// Job `line` of run `run` (its payload is the job as JSON text), with the headers the
/// coordinators need; its message id makes a second publish of it (a retried publish, a
/// resubmitted run) a no-op within the duplicate window.
pub fn job_message(run: &str, line: u64, json: Bytes, settings: &QueueSettings) -> PublishMessage {
    let id = job_id(run, line);
    PublishMessage::build()
        .payload(json)
        .message_id(&id)
        .header(JOB_HEADER, id.as_str())
        .header(REPLY_HEADER, settings.results_subject(run).as_str())
}

/// The id of job `line` of run `run`.
pub fn job_id(run: &str, line: u64) -> String {
    format!("{run}.{line}")
}

/// The line number in a job id made by [`job_id`].
pub fn line_of(job: &str) -> Option<u64> {
    job.rsplit_once('.')?.1.parse().ok()
}

/// A result's payload: `{"value":V}` (the result as JSON text) or `{"error":"..."}`.
pub fn result_payload(answer: Result<&str, &str>) -> Bytes {
    match answer {
        Ok(json) => format!("{{\"value\":{json}}}"),
        Err(reason) => format!(
            "{{\"error\":{}}}",
            serde_json::Value::String(reason.to_owned())
        ),
    }
    .into()
}

/// The message carrying job `job`'s result (a payload made by [`result_payload`]), computed
/// by the coordinator `coordinator`.
pub fn result_message(job: &str, payload: Bytes, coordinator: &str) -> PublishMessage {
    PublishMessage::build()
        .payload(payload)
        .message_id(job)
        .header(JOB_HEADER, job)
        .header(COORDINATOR_HEADER, coordinator)
}

/// Whether a result's payload (made by [`result_payload`]) says the job failed; `None` if it
/// is not such a payload.
pub fn result_failed(payload: &[u8]) -> Option<bool> {
    if payload.starts_with(b"{\"value\":") {
        Some(false)
    } else if payload.starts_with(b"{\"error\":") {
        Some(true)
    } else {
        None
    }
}

/// The command-line flags naming the queue, shared by `distchan-coordinator serve` and
/// `distchan-submit` (feature `cli`).
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// The NATS server with JetStream holding the shared queue, e.g. nats://127.0.0.1:4222.
    #[arg(long = "queue", env = "DISTCHAN_QUEUE", value_name = "URL")]
    pub url: String,
    /// The work-queue stream jobs wait in.
    #[arg(long, env = "DISTCHAN_JOBS_STREAM", default_value = "DISTCHAN_JOBS")]
    pub jobs_stream: String,
    /// The subject jobs are published to.
    #[arg(long, env = "DISTCHAN_JOBS_SUBJECT", default_value = "distchan.jobs")]
    pub jobs_subject: String,
    /// The stream results are stored in.
    #[arg(
        long,
        env = "DISTCHAN_RESULTS_STREAM",
        default_value = "DISTCHAN_RESULTS"
    )]
    pub results_stream: String,
    /// Results of run R are published to PREFIX.R.
    #[arg(
        long,
        env = "DISTCHAN_RESULTS_PREFIX",
        default_value = "distchan.results"
    )]
    pub results_prefix: String,
    /// The durable consumer the coordinators share.
    #[arg(
        long,
        env = "DISTCHAN_CONSUMER",
        default_value = "distchan-coordinators"
    )]
    pub consumer: String,
    /// Milliseconds a delivered job may go unacknowledged before the broker delivers it
    /// again (a coordinator keeps the jobs it holds alive).
    #[arg(long, env = "DISTCHAN_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
}

#[cfg(feature = "cli")]
impl QueueArgs {
    /// The settings these flags describe; a job is delivered at most `max_retries + 1`
    /// times (a coordinator lost with it in hand costs one delivery, as a lost worker
    /// costs one dispatch).
    pub fn settings(&self, max_retries: u32) -> QueueSettings {
        QueueSettings {
            url: self.url.clone(),
            jobs_stream: self.jobs_stream.clone(),
            jobs_subject: self.jobs_subject.clone(),
            results_stream: self.results_stream.clone(),
            results_prefix: self.results_prefix.clone(),
            consumer: self.consumer.clone(),
            ack_wait: Duration::from_millis(self.ack_wait_ms.max(1)),
            max_deliver: i64::from(max_retries) + 1,
            ..QueueSettings::new("")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_carry_their_line() {
        let id = job_id("run.with.dots", 42);
        assert_eq!(line_of(&id), Some(42));
        assert_eq!(line_of("no-line"), None);
    }

    #[test]
    fn result_payloads_say_whether_the_job_failed() {
        let ok = result_payload(Ok("[1,2]"));
        let failed = result_payload(Err("handler said \"no\""));
        assert_eq!(&ok[..], b"{\"value\":[1,2]}");
        let text: serde_json::Value = serde_json::from_slice(&failed).unwrap();
        assert_eq!(text["error"], "handler said \"no\"");
        assert_eq!(result_failed(&ok), Some(false));
        assert_eq!(result_failed(&failed), Some(true));
        assert_eq!(result_failed(b"[]"), None);
    }
}
