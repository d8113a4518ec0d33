//! `Config::trust_forwarded_for`: behind a proxy, a worker's address is the first one of its
//! `X-Forwarded-For` header; without the setting the header is ignored (any client can send
//! one) and the TCP peer is shown.

mod common;

use std::net::IpAddr;

use common::{hello, next_msg, open, send_hello, start};
use distchan_coordinator::Config;
use distchan_protocol::wire::ToWorker;

/// The address the coordinator shows for a worker that sends `X-Forwarded-For: forwarded`.
async fn shown_address(trust: bool, forwarded: &str) -> IpAddr {
    let (coordinator, _jobs, _results) = start::<String, String>(Config {
        trust_forwarded_for: trust,
        ..Config::default()
    })
    .await;
    let mut ws = open(&coordinator.ws_url(), &[("x-forwarded-for", forwarded)]).await;
    send_hello(&mut ws, hello()).await;
    assert!(matches!(
        next_msg(&mut ws).await,
        Some(ToWorker::Welcome(_))
    ));
    let workers = coordinator.workers().await;
    assert_eq!(workers.len(), 1);
    workers[0].addr.ip()
}

#[tokio::test]
async fn the_forwarded_address_is_shown_only_when_trusted() {
    let forwarded = "203.0.113.9, 10.1.2.3";
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(shown_address(true, forwarded).await, client);
    assert_eq!(shown_address(false, forwarded).await, peer);
    // A header that names no address leaves the TCP peer.
    assert_eq!(shown_address(true, "unknown").await, peer);
}
