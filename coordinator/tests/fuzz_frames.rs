//! Random and mutated frames thrown at a live coordinator, as the first frame of a
//! connection and after a completed handshake, in a bounded number of rounds. No task may
//! panic, every bad connection must end or carry on without hanging, and a well-behaved
//! worker must still get every job afterwards.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::{hello, mem_capitalizer, open_mem, raw_mem_worker, start_mem, MemWs};
use distchan_coordinator::Config;
use distchan_protocol::{
    wire::{self, Hello, JobResult, ToCoordinator},
    JobId,
};
use distchan_worker::Options;
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// xorshift64*: a small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Bytes> {
    let hello_frame = |h: Hello| wire::encode_to_coordinator(&ToCoordinator::Hello(h)).unwrap();
    vec![
        hello_frame(hello()),
        hello_frame(Hello {
            version: 2,
            ..hello()
        }),
        hello_frame(Hello {
            capacity: 0,
            ..hello()
        }),
        wire::encode_to_coordinator(&ToCoordinator::Result(JobResult {
            id: JobId(3),
            outcome: Ok(Bytes::from_static(b"\xa1x")),
        }))
        .unwrap(),
        wire::encode_to_coordinator(&ToCoordinator::Result(JobResult {
            id: JobId(u64::MAX),
            outcome: Err("e".into()),
        }))
        .unwrap(),
        wire::encode_to_coordinator(&ToCoordinator::Results(vec![
            JobResult {
                id: JobId(1),
                outcome: Ok(Bytes::from_static(b"\xa1y")),
            },
            JobResult {
                id: JobId(2),
                outcome: Err("f".into()),
            },
        ]))
        .unwrap(),
        wire::encode_to_coordinator(&ToCoordinator::Drain).unwrap(),
        wire::encode_to_coordinator(&ToCoordinator::Emit {
            payload: Bytes::from_static(b"\x01"),
        })
        .unwrap(),
    ]
}

fn mutate(rng: &mut Rng, seeds: &[Bytes]) -> Vec<u8> {
    let mut frame = seeds[rng.below(seeds.len())].to_vec();
    match rng.below(5) {
        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        1 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(frame.len());
                frame[i] = rng.next() as u8;
            }
            frame
        }
        2 => {
            frame.truncate(rng.below(frame.len()));
            frame
        }
        3 => {
            let extra: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
            frame.extend(extra);
            frame
        }
        _ => frame,
    }
}

/// Waits until the coordinator has read everything sent so far (it answers our ping) or
/// has closed the connection.
async fn settled(ws: &mut MemWs) {
    if ws
        .send(Message::Ping(Bytes::from_static(b"sync")))
        .await
        .is_err()
    {
        return;
    }
    loop {
        match timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the coordinator never hangs")
        {
            Some(Ok(Message::Pong(_))) | Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                return
            }
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn random_and_mutated_frames_never_break_the_coordinator() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let config = Config {
        handshake_timeout: Duration::from_secs(5),
        max_frame: 1 << 16,
        ..Config::default()
    };
    let (coordinator, net, jobs, mut results) = start_mem::<String, String>(config).await;
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..300 {
        let frame = mutate(&mut rng, &seeds);
        if rng.below(2) == 0 {
            // As the very first frame.
            let mut ws = open_mem(&net).await;
            if ws.send(Message::Binary(frame.into())).await.is_ok() {
                settled(&mut ws).await;
            }
        } else {
            // After a good handshake.
            let (mut ws, _) = raw_mem_worker(&net, hello()).await;
            if ws.send(Message::Binary(frame.into())).await.is_ok() {
                settled(&mut ws).await;
            }
        }
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a task panicked");

    let worker = tokio::spawn(mem_capitalizer(net.clone(), Options::default()));
    for i in 0..20 {
        jobs.send(format!("after fuzz {i}")).await.unwrap();
    }
    drop(jobs);
    let outcomes = timeout(Duration::from_secs(20), results.collect_all())
        .await
        .unwrap();
    assert_eq!(outcomes.iter().filter(|o| !o.is_emitted()).count(), 20);
    assert!(outcomes.iter().all(|o| o.result.is_ok() || o.is_emitted()));
    assert_eq!(worker.await.unwrap().len(), 20);
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a task panicked");
    drop(coordinator);
}
