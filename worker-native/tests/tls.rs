//! The native worker over TLS against a coordinator serving HTTPS and `wss://` itself, with
//! a certificate made here for `localhost` and 127.0.0.1: with the certificate given as its
//! CA the worker runs a task module fetched over `https://`; without it, or with `wss://`
//! against a plain port, it fails at once with an [`Error::Config`] that says what to do (so
//! a retrying worker does not retry), while a refused TCP connection stays a connection
//! error. A client silent in its TLS handshake holds up no other connection and is closed
//! after the header timeout.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use distchan_coordinator::{Config, Coordinator, TaskModule, TlsConfig};
use distchan_protocol::session::should_reconnect;
use distchan_worker::{serve_task, Error, Options};
use tokio::{io::AsyncReadExt, net::TcpStream, time::timeout};

const LIMIT: Duration = Duration::from_secs(60);

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

fn module_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/modules")
        .join(name)
}

/// A coordinator running the echoing task module, over TLS when `tls` is given.
async fn coordinator(
    tls: Option<TlsConfig>,
) -> (
    Coordinator,
    distchan_coordinator::JobSender<u64>,
    distchan_coordinator::ResultReceiver<u64>,
) {
    coordinator_with(
        "misbehave.wat",
        Config {
            tls,
            ..Config::default()
        },
    )
    .await
}

/// A coordinator running the task module in `file` with `config`. Compiled modules are
/// kept per process, by hash: only the first test to run a module downloads it.
async fn coordinator_with(
    file: &str,
    config: Config,
) -> (
    Coordinator,
    distchan_coordinator::JobSender<u64>,
    distchan_coordinator::ResultReceiver<u64>,
) {
    let module = TaskModule::from_file(module_file(file)).unwrap();
    Coordinator::builder()
        .config(Config {
            max_retries: 0,
            ..config
        })
        .module(module)
        .bind::<u64, u64>("127.0.0.1:0")
        .await
        .unwrap()
}

/// The worker's error, which must come quickly: with reconnecting on (the default), only
/// an error that retrying cannot fix ends it.
async fn failure(url: &str, options: Options) -> Error {
    match timeout(LIMIT, serve_task(url, options)).await {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("the worker should have failed"),
        Err(_) => panic!("the worker neither failed nor finished"),
    }
}

fn assert_config_error(err: &Error) {
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(!should_reconnect(err), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_a_worker_runs_the_module_over_wss_and_https() {
    let (cert, key) = certificate();
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (coordinator, jobs, mut results) = coordinator(Some(tls)).await;
    let url = coordinator.ws_url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    assert!(coordinator.http_url().starts_with("https://"));

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let options = Options {
        concurrency: 1,
        module_cache: Some(dir.path().join("cache")),
        ..Options::default()
    }
    .ca_cert_file(&ca)
    .unwrap();
    let worker = tokio::spawn(async move { serve_task(&url, options).await });

    // Jobs starting with 7, 8 or 9 are echoed by the module.
    let sent = [7u64, 80, 9, 71, 800];
    jobs.send_many(sent).await.unwrap();
    drop(jobs);
    let mut outcomes = timeout(LIMIT, results.collect_all()).await.unwrap();
    outcomes.sort_by_key(|o| o.id);
    let values: Vec<u64> = outcomes
        .into_iter()
        .map(|o| o.result.expect("a result"))
        .collect();
    assert_eq!(values, sent);
    timeout(LIMIT, worker)
        .await
        .unwrap()
        .unwrap()
        .expect("the worker ends cleanly at end of work");
    // The module came over https, from this coordinator.
    assert_eq!(coordinator.stats().module_downloads, 1);
}

#[tokio::test]
async fn without_the_ca_the_certificate_is_refused_with_a_hint() {
    let (cert, key) = certificate();
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (coordinator, _jobs, _results) = coordinator(Some(tls)).await;
    let err = failure(&coordinator.ws_url(), Options::default()).await;
    assert_config_error(&err);
    let message = err.to_string();
    assert!(message.contains("is not trusted"), "{message}");
    assert!(message.contains("--ca-cert"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_eq!(coordinator.stats().workers, 0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_naming_the_name() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = made.cert.pem();
    let key = made.signing_key.serialize_pem();
    let tls = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let (coordinator, _jobs, _results) = coordinator(Some(tls)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let options = Options::default().ca_cert_file(&ca).unwrap();
    // Trusted, but made for `localhost` only.
    let err = failure(&coordinator.ws_url(), options).await;
    assert_config_error(&err);
    let message = err.to_string();
    assert!(
        message.contains("is not valid for the name \"127.0.0.1\""),
        "{message}"
    );
}

#[tokio::test]
async fn wss_against_a_plain_port_asks_whether_it_serves_tls() {
    let (coordinator, _jobs, _results) = coordinator(None).await;
    let addr = coordinator.local_addr();
    let url = format!("wss://{addr}/ws");
    let err = failure(&url, Options::default()).await;
    assert_config_error(&err);
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "TLS handshake with {addr} failed (is the coordinator serving TLS on that port?)"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_refused_connection_stays_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // Connecting again would be right for this error: connect once to see it.
    let err = failure(
        &format!("wss://{addr}/ws"),
        Options::default().reconnect(false),
    )
    .await;
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert!(should_reconnect(&err), "{err}");
}

#[test]
fn a_ca_file_without_certificates_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Options::default().ca_cert_file(dir.path().join("missing.pem"));
    let err = missing.expect_err("a missing file is refused");
    assert_config_error(&err);
    assert!(err
        .to_string()
        .contains("cannot read the CA certificate file"));

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = Options::default().ca_cert_file(&junk).unwrap_err();
    assert_config_error(&err);
    assert!(
        err.to_string().contains("holds no PEM certificate"),
        "{err}"
    );

    // Several certificates in one file are all taken.
    let two = dir.path().join("two.pem");
    std::fs::write(&two, format!("{}{}", certificate().0, certificate().0)).unwrap();
    assert_eq!(
        Options::default()
            .ca_cert_file(&two)
            .unwrap()
            .ca_certs
            .len(),
        2
    );
}

/// A worker trusting `cert` runs `sent` through the coordinator at `url` and ends cleanly.
async fn run_jobs(
    url: String,
    cert: &str,
    jobs: distchan_coordinator::JobSender<u64>,
    results: &mut distchan_coordinator::ResultReceiver<u64>,
    sent: &[u64],
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).unwrap();
    let options = Options {
        concurrency: 1,
        module_cache: None,
        ..Options::default()
    }
    .ca_cert_file(&ca)
    .unwrap();
    let worker = tokio::spawn(async move { serve_task(&url, options).await });
    jobs.send_many(sent.iter().copied()).await.unwrap();
    drop(jobs);
    let mut outcomes = results.collect_all().await;
    outcomes.sort_by_key(|o| o.id);
    let values: Vec<u64> = outcomes.into_iter().map(|o| o.result.unwrap()).collect();
    assert_eq!(values, sent);
    worker.await.unwrap().expect("the worker ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_in_its_tls_handshake_holds_up_no_one() {
    let (cert, key) = certificate();
    // The reactor twin of the module the other tests run, which echoes jobs 8 and 9 too.
    let (coordinator, jobs, mut results) = coordinator_with(
        "misbehave-reactor.wat",
        Config {
            tls: Some(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
            // Far longer than the test may take: only a handshake of its own lets others in.
            header_read_timeout: Duration::from_secs(120),
            ..Config::default()
        },
    )
    .await;
    let silent: Vec<TcpStream> = futures_util::future::join_all(
        (0..5).map(|_| TcpStream::connect(coordinator.local_addr())),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let url = coordinator.ws_url();
    timeout(
        Duration::from_secs(20),
        run_jobs(url, &cert, jobs, &mut results, &[8, 9, 80]),
    )
    .await
    .expect("the worker was held up by the silent clients");
    assert_eq!(coordinator.stats().connections_pending, silent.len() as u64);
}

#[tokio::test]
async fn a_client_silent_in_its_tls_handshake_is_closed_after_the_header_timeout() {
    let (cert, key) = certificate();
    let (coordinator, _jobs, _results) = coordinator_with(
        "misbehave-reactor.wat",
        Config {
            tls: Some(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
            header_read_timeout: Duration::from_millis(200),
            ..Config::default()
        },
    )
    .await;
    let mut silent = TcpStream::connect(coordinator.local_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let read = timeout(LIMIT, silent.read(&mut buf))
        .await
        .expect("the coordinator closes a silent client");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
