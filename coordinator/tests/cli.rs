//! The binary's flags about secrets and TLS: `--help` never prints the values of the token
//! or key variables; `--tls-cert` and `--tls-key` come together; a certificate and key that
//! cannot serve are refused with a clear error. And a run with `--replicas` and too few
//! workers says why its jobs wait.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use distchan_coordinator::{Error, TlsConfig};

const SECRET: &str = "s3cr3t-value";

fn coordinator(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distchan-coordinator"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

#[test]
fn help_never_shows_the_token_or_key_from_the_environment() {
    let key = "ab".repeat(32);
    for args in [&["--help"][..], &["pipe", "--help"], &["demo", "--help"]] {
        let out = coordinator(
            args,
            &[("DISTCHAN_TOKEN", SECRET), ("DISTCHAN_AES_KEY", &key)],
        );
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("DISTCHAN_TOKEN"), "{args:?}: {help}");
        assert!(!help.contains(SECRET), "{args:?} shows the token: {help}");
        assert!(!help.contains(&key), "{args:?} shows the key: {help}");
    }
}

#[test]
fn tls_cert_and_key_come_together() {
    let out = coordinator(&["--tls-cert", "cert.pem", "--local-workers", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");

    let out = coordinator(
        &["--local-workers", "0"],
        &[("DISTCHAN_TLS_KEY", "key.pem")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let out = coordinator(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            "key.pem",
            "--local-workers",
            "0",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot read the TLS certificate {}",
            cert.display()
        )),
        "{err}"
    );
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_refused() {
    let names = vec!["localhost".to_owned()];
    let one = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    let other = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = one.cert.pem();
    assert!(
        TlsConfig::from_pem(cert.as_bytes(), one.signing_key.serialize_pem().as_bytes()).is_ok()
    );

    let err = TlsConfig::from_pem(
        cert.as_bytes(),
        other.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot be used"), "{err}");

    let err = TlsConfig::from_pem(b"no pem here", one.signing_key.serialize_pem().as_bytes())
        .unwrap_err();
    assert!(
        err.to_string().contains("holds no PEM certificate"),
        "{err}"
    );
    let err = TlsConfig::from_pem(cert.as_bytes(), b"").unwrap_err();
    assert!(
        err.to_string().contains("no usable PEM private key"),
        "{err}"
    );
}

#[test]
fn replicated_jobs_without_enough_workers_say_why_they_wait() {
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_distchan-coordinator"))
        .with_file_name("distchan-worker");
    assert!(
        worker.is_file(),
        "{} is missing: test the worker too (`cargo test -p distchan-coordinator -p distchan-worker`)",
        worker.display()
    );
    // Two replicas and one local worker: every job waits for a second worker.
    let mut child = Command::new(env!("CARGO_BIN_EXE_distchan-coordinator"))
        .args(["--demo", "capitalize", "--jobs", "10", "--replicas", "2"])
        .args(["--local-workers", "1", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let said = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("replicated jobs wait") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let said = said.unwrap_or_else(|| panic!("no word about the waiting jobs: {seen:#?}"));
    assert!(
        said.contains("2 workers of distinct groups") && said.contains("groups connected now: 1"),
        "{said}"
    );
}
