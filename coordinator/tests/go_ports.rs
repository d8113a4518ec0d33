//! Ports of the Go package's tests, plus the channel semantics it promises.

mod common;

use std::collections::BTreeMap;

use common::{capitalizer, start, LIMIT};
use distchan_coordinator::{Config, Coordinator, JobOutcome};
use distchan_protocol::{
    transform::Aes256GcmTransform,
    wire::{self, RefusalCode, PROTOCOL_VERSION},
    Error,
};
use distchan_worker::Options;
use tokio::{sync::mpsc, time::timeout};

const WORDS: [&str; 4] = ["why", "hello", "there", "world"];

async fn send_words(jobs: distchan_coordinator::JobSender<String>) {
    for w in WORDS {
        jobs.send(w.to_owned()).await.unwrap();
    }
}

#[tokio::test]
async fn one_worker_receives_every_value_in_order() {
    let (coordinator, jobs, mut results) = start::<String, String>(go()).await;
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    coordinator.wait_until_ready().await;
    send_words(jobs).await;
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(worker.await.unwrap(), WORDS);
    let got: Vec<String> = outcomes.into_iter().map(|o| o.result.unwrap()).collect();
    let mut want: Vec<String> = WORDS.iter().map(|w| w.to_uppercase()).collect();
    let mut sorted = got.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want);
}

#[tokio::test]
async fn aes_round_trip_with_the_same_key_delivers_everything() {
    let key = [9u8; 32];
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .transform(Aes256GcmTransform::new(&key))
        .bind::<String, String>("127.0.0.1:0")
        .await
        .unwrap();
    let options = Options::default().transform(Aes256GcmTransform::new(&key));
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), options));
    send_words(jobs).await;
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(worker.await.unwrap(), WORDS);
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
}

#[tokio::test]
async fn a_key_differing_in_its_last_byte_delivers_nothing_and_others_carry_on() {
    let key = [9u8; 32];
    let mut wrong = key;
    wrong[31] ^= 0x01;
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .transform(Aes256GcmTransform::new(&key))
        .bind::<String, String>("127.0.0.1:0")
        .await
        .unwrap();
    send_words(jobs).await;

    // The worker with the wrong key gets a job it cannot decrypt: its stream ends, it
    // delivers zero values, and its connection ends with an error.
    let (mut bad_jobs, _bad_results, bad_client) = distchan_worker::connect::<String, String>(
        &coordinator.ws_url(),
        Options::default().transform(Aes256GcmTransform::new(&wrong)),
    )
    .await
    .unwrap();
    assert!(
        timeout(LIMIT, bad_jobs.recv()).await.unwrap().is_none(),
        "no value may be delivered"
    );
    let err = timeout(LIMIT, bad_client.done())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");

    // The coordinator keeps serving: a worker with the right key gets all four.
    let good = tokio::spawn(capitalizer(
        coordinator.ws_url(),
        Options::default().transform(Aes256GcmTransform::new(&key)),
    ));
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    let mut seen = good.await.unwrap();
    seen.sort();
    let mut want = WORDS.to_vec();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(outcomes.len(), 4);
}

#[tokio::test]
async fn ten_workers_share_a_hundred_ints_round_robin() {
    let (coordinator, jobs, mut results) = start::<u64, u64>(go()).await;
    let mut workers = Vec::new();
    for _ in 0..10 {
        // `connect` returns after the welcome, so workers register in this order.
        let (mut jobs, out, client) = distchan_worker::connect::<u64, u64>(
            &coordinator.ws_url(),
            Options::default().capacity(16),
        )
        .await
        .unwrap();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(job) = jobs.recv().await {
                seen.push(job.value);
                out.send(job.id, Ok(job.value * 2)).await.unwrap();
            }
            drop(out);
            client.done().await.unwrap();
            seen
        }));
    }
    assert_eq!(coordinator.worker_count(), 10);
    for v in 0..100u64 {
        jobs.send(v).await.unwrap();
    }
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    for (i, w) in workers.into_iter().enumerate() {
        let seen = w.await.unwrap();
        let want: Vec<u64> = (0..100).filter(|v| v % 10 == i as u64).collect();
        assert_eq!(seen, want, "worker {i}");
    }
    let by_id: BTreeMap<u64, u64> = outcomes
        .into_iter()
        .map(|o| (o.id.0, o.result.unwrap()))
        .collect();
    assert_eq!(by_id.len(), 100);
    assert!(by_id.iter().all(|(id, v)| *v == id * 2));
}

#[tokio::test]
async fn a_worker_of_another_version_is_refused_and_receives_nothing() {
    let (coordinator, jobs, mut results) = start::<String, String>(go()).await;
    send_words(jobs).await;
    // The previous version (which knows no batches of jobs) and a future one.
    for version in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
        let options = Options {
            protocol_version: version,
            ..Options::default()
        };
        let refused = timeout(
            LIMIT,
            distchan_worker::connect::<String, String>(&coordinator.ws_url(), options),
        )
        .await
        .expect("a refusal, not a hang");
        match refused {
            Err(Error::Refused(r)) => {
                assert_eq!(r.code, RefusalCode::VersionMismatch);
                assert!(
                    r.reason.contains(&wire::subprotocol(PROTOCOL_VERSION))
                        && r.reason.contains(&wire::subprotocol(version)),
                    "{}",
                    r.reason
                );
            }
            other => panic!("expected a version refusal for {version}, got {other:?}"),
        }
    }
    assert_eq!(coordinator.stats().dispatched, 0);
    let good = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    assert_eq!(
        timeout(LIMIT, results.collect_all()).await.unwrap().len(),
        4
    );
    assert_eq!(good.await.unwrap().len(), 4);
}

#[tokio::test]
async fn jobs_sent_before_any_worker_wait_and_are_all_delivered() {
    let (coordinator, jobs, mut results) = start::<String, String>(go()).await;
    assert!(!coordinator.ready());
    for i in 0..50 {
        jobs.send(format!("early {i}")).await.unwrap();
    }
    drop(jobs);
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), 50);
    assert_eq!(worker.await.unwrap().len(), 50);
}

#[tokio::test]
async fn wait_until_ready_is_notified_when_a_worker_joins() {
    let (coordinator, _jobs, _results) = start::<String, String>(go()).await;
    let url = coordinator.ws_url();
    let (_j, _r, _client) = {
        let connect = distchan_worker::connect::<String, String>(&url, Options::default());
        let (ready, conn) = tokio::join!(timeout(LIMIT, coordinator.wait_until_ready()), connect);
        ready.expect("notified");
        conn.unwrap()
    };
    assert!(coordinator.ready());
}

#[tokio::test]
async fn jobs_only_use_with_user_channels() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (out, user_jobs) = mpsc::channel::<String>(8);
    let coordinator = Coordinator::builder()
        .listen_with::<String, String>(listener, Some(user_jobs), None)
        .unwrap();
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    for w in WORDS {
        out.send(w.to_owned()).await.unwrap();
    }
    drop(out);
    timeout(LIMIT, coordinator.finished())
        .await
        .expect("all jobs answered");
    assert_eq!(worker.await.unwrap(), WORDS);
    assert_eq!(coordinator.stats().completed, 4);
}

#[tokio::test]
async fn results_only_use_with_user_channels() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (into, mut user_results) = mpsc::channel::<JobOutcome<String>>(8);
    let coordinator = Coordinator::builder()
        .listen_with::<String, String>(listener, None, Some(into))
        .unwrap();
    let (_jobs, results, _client) =
        distchan_worker::connect::<String, String>(&coordinator.ws_url(), Options::default())
            .await
            .unwrap();
    for w in WORDS {
        results.emit(w.to_owned()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let o = timeout(LIMIT, user_results.recv()).await.unwrap().unwrap();
        assert!(o.is_emitted());
        got.push(o.result.unwrap());
    }
    assert_eq!(got, WORDS);
}

#[tokio::test]
async fn end_of_work_ends_every_stream_and_done_completes() {
    let (coordinator, jobs, mut results) = start::<String, String>(go()).await;
    let a = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    let b = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    coordinator.wait_for_workers(2).await;
    for i in 0..20 {
        jobs.send(format!("w{i}")).await.unwrap();
    }
    drop(jobs);
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    assert_eq!(outcomes.len(), 20);
    assert!(
        results.recv().await.is_none(),
        "the result receiver has ended"
    );
    // Both workers' job streams end and `done()` completes (inside `capitalizer`).
    let (a, b) = (
        timeout(LIMIT, a).await.unwrap().unwrap(),
        timeout(LIMIT, b).await.unwrap().unwrap(),
    );
    assert_eq!(a.len() + b.len(), 20);
    timeout(LIMIT, coordinator.finished()).await.unwrap();
}

#[tokio::test]
async fn ordered_mode_delivers_in_send_order() {
    let config = Config {
        ordered: true,
        ..go()
    };
    let (coordinator, jobs, mut results) = start::<u32, u32>(config).await;
    let (mut wjobs, out, client) = distchan_worker::connect::<u32, u32>(
        &coordinator.ws_url(),
        Options::default().capacity(10),
    )
    .await
    .unwrap();
    for v in 0..10u32 {
        jobs.send(v).await.unwrap();
    }
    drop(jobs);
    // Answer all ten in reverse order.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(wjobs.recv().await.unwrap());
    }
    for job in held.into_iter().rev() {
        out.send(job.id, Ok(job.value + 100)).await.unwrap();
    }
    let got: Vec<(u64, u32)> = timeout(LIMIT, results.collect_all())
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.id.0, o.result.unwrap()))
        .collect();
    let want: Vec<(u64, u32)> = (0..10).map(|i| (i as u64, i + 100)).collect();
    assert_eq!(got, want);
    assert!(wjobs.recv().await.is_none());
    drop(out);
    client.done().await.unwrap();
}

#[tokio::test]
async fn send_many_queues_in_order_waits_for_room_and_loses_nothing() {
    // A queue of 8 and no worker yet: the batch of 100 must wait for room.
    let config = Config {
        queue_capacity: 8,
        ..go()
    };
    let (coordinator, jobs, mut results) = start::<String, String>(config).await;
    let words: Vec<String> = (0..100).map(|i| format!("word {i}")).collect();
    let sending = tokio::spawn({
        let words = words.clone();
        async move { jobs.send_many(words).await.unwrap() }
    });
    let mut workers = coordinator.watch_workers();
    // Nothing is answered while no worker is connected, however long the batch waits.
    assert!(
        timeout(std::time::Duration::from_millis(50), results.recv())
            .await
            .is_err()
    );
    let worker = tokio::spawn(capitalizer(coordinator.ws_url(), Options::default()));
    workers.wait_for(|&n| n == 1).await.unwrap();
    let ids = timeout(LIMIT, sending).await.unwrap().unwrap();
    assert_eq!(
        ids.iter().map(|id| id.0).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>(),
        "ids in the batch's order, none skipped"
    );
    let outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    let by_id: BTreeMap<u64, String> = outcomes
        .into_iter()
        .map(|o| (o.id.0, o.result.unwrap()))
        .collect();
    assert_eq!(by_id.len(), 100);
    for (id, word) in by_id {
        assert_eq!(word, words[id as usize].to_uppercase());
    }
    assert_eq!(
        worker.await.unwrap(),
        words,
        "one worker gets them in order"
    );
}

#[tokio::test]
async fn a_batch_with_a_job_that_cannot_be_encoded_queues_nothing() {
    /// A value whose serialization fails.
    struct Unencodable;
    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot be encoded"))
        }
    }
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Job {
        Fine(String),
        Broken(#[serde(serialize_with = "broken")] ()),
    }
    fn broken<S: serde::Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&Unencodable, s)
    }
    let (coordinator, jobs, _results) = start::<Job, String>(go()).await;
    let batch = vec![
        Job::Fine("a".into()),
        Job::Broken(()),
        Job::Fine("b".into()),
    ];
    let err = jobs.send_many(batch).await.unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err:?}");
    assert_eq!(coordinator.stats().queued, 0, "nothing queued");
    let id = jobs.send(Job::Fine("c".into())).await.unwrap();
    assert_eq!(id.0, 0, "no id was used up");
}

/// The Go package's semantics: every worker takes what it declared at once (it had no
/// adaptive windows) and one job per turn, so round-robin gives worker i exactly the values
/// v % 10 == i.
fn go() -> Config {
    Config {
        adaptive_windows: false,
        strict_turns: true,
        ..Config::default()
    }
}
