//! The library's journal: a program that restarts and sends its keyed work again gets the
//! outcomes the journal holds without the jobs being run again, and only the rest is
//! computed; every key is answered exactly once, with the right value.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use distchan_coordinator::{Coordinator, Error, KeyedSend};
use distchan_worker::{serve, Options};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// A worker that doubles numbers (and refuses 13), counting the jobs it runs.
fn doubler(url: String, ran: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let options = Options {
            reconnect: false,
            ..Options::default()
        };
        let _ = serve(&url, options, move |n: u64| {
            let ran = ran.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                if n == 13 {
                    Err("13 is unlucky".to_owned())
                } else {
                    Ok(n * 2)
                }
            }
        })
        .await;
    })
}

fn key(n: u64) -> String {
    format!("number-{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_program_gets_journaled_outcomes_without_running_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doubles.journal");
    let total = 200u64;

    // First run: every key sent; the program "dies" after taking 120 outcomes.
    let ran_first = Arc::new(AtomicUsize::new(0));
    let taken_first = {
        let (coordinator, jobs, mut results) = Coordinator::builder()
            .journal(&path, "doubles of 0..200")
            .bind::<u64, u64>("127.0.0.1:0")
            .await
            .unwrap();
        assert_eq!(coordinator.journaled(), 0);
        let worker = doubler(coordinator.ws_url(), ran_first.clone());
        for n in 0..total {
            let sent = jobs.send_keyed(key(n), n).await.unwrap();
            assert!(matches!(sent, KeyedSend::Queued(_)), "{sent:?}");
        }
        let mut taken = HashMap::new();
        while taken.len() < 120 {
            let outcome = timeout(LIMIT, results.recv()).await.unwrap().unwrap();
            let key = String::from_utf8(outcome.key.clone().expect("keyed")).unwrap();
            assert!(!outcome.is_from_journal());
            taken.insert(key, outcome.result.map_err(|e| e.to_string()));
        }
        drop((jobs, results));
        coordinator.shutdown().await;
        worker.abort();
        taken
    };

    // Second run: the same keys again. What the first run handed out is answered from the
    // journal; only the rest runs.
    let ran_second = Arc::new(AtomicUsize::new(0));
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .journal(&path, "doubles of 0..200")
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .unwrap();
    let journaled = coordinator.journaled();
    assert!(
        journaled >= taken_first.len(),
        "every outcome handed out was durable first: {journaled} < {}",
        taken_first.len()
    );
    let worker = doubler(coordinator.ws_url(), ran_second.clone());
    let mut from_journal = 0;
    for n in 0..total {
        match jobs.send_keyed(key(n), n).await.unwrap() {
            KeyedSend::FromJournal(_) => from_journal += 1,
            KeyedSend::Queued(_) => {}
        }
    }
    drop(jobs);
    assert_eq!(from_journal, journaled);

    let mut seen = HashMap::new();
    while let Some(outcome) = timeout(LIMIT, results.recv()).await.unwrap() {
        let key = String::from_utf8(outcome.key.clone().expect("keyed")).unwrap();
        let n: u64 = key.strip_prefix("number-").unwrap().parse().unwrap();
        if outcome.is_from_journal() {
            assert_eq!(outcome.worker, None);
        }
        let result = outcome.result.map_err(|e| e.to_string());
        match &result {
            Ok(v) => assert_eq!(*v, n * 2, "{key}"),
            Err(e) => {
                assert_eq!(n, 13);
                assert!(e.contains("13 is unlucky"), "{e}");
            }
        }
        if let Some(first) = taken_first.get(&key) {
            assert_eq!(
                first, &result,
                "{key}: the journal gives back what was handed out"
            );
        }
        assert!(seen.insert(key.clone(), result).is_none(), "{key} twice");
    }
    assert_eq!(seen.len(), total as usize, "every key answered once");
    assert_eq!(
        ran_second.load(Ordering::SeqCst),
        total as usize - journaled,
        "only what the journal lacked was run"
    );
    worker.await.unwrap();
    coordinator.shutdown().await;

    // A journal made for another run is refused, saying why.
    let refused = Coordinator::builder()
        .journal(&path, "triples of 0..200")
        .bind::<u64, u64>("127.0.0.1:0")
        .await;
    match refused {
        Err(Error::Config { reason, source }) => {
            assert!(reason.contains("doubles.journal"), "{reason}");
            let source = source.expect("the journal's error").to_string();
            assert!(
                source.contains("doubles of 0..200") && source.contains("triples of 0..200"),
                "{source}"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn without_a_journal_a_key_is_only_carried_along() {
    let (coordinator, jobs, mut results) = Coordinator::builder()
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let worker = doubler(coordinator.ws_url(), ran.clone());
    for _ in 0..2 {
        let sent = jobs.send_keyed("same key", 21).await.unwrap();
        assert!(matches!(sent, KeyedSend::Queued(_)));
    }
    drop(jobs);
    let mut n = 0;
    while let Some(outcome) = timeout(LIMIT, results.recv()).await.unwrap() {
        assert_eq!(outcome.key.as_deref(), Some(&b"same key"[..]));
        assert_eq!(outcome.result.unwrap(), 42);
        n += 1;
    }
    assert_eq!((n, ran.load(Ordering::SeqCst)), (2, 2));
    worker.await.unwrap();
    coordinator.shutdown().await;
}
