//! Secrets stay secret: `distchan-worker --help` never prints the token or key given in the
//! environment, and `Options`' `Debug` output never shows the token.

use std::process::Command;

use distchan_worker::Options;

const SECRET: &str = "s3cr3t-value";

#[test]
fn help_never_shows_the_token_or_key_from_the_environment() {
    let key = "ab".repeat(32);
    let out = Command::new(env!("CARGO_BIN_EXE_distchan-worker"))
        .arg("--help")
        .env("DISTCHAN_TOKEN", SECRET)
        .env("DISTCHAN_AES_KEY", &key)
        .output()
        .expect("the binary runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("DISTCHAN_TOKEN"), "{help}");
    assert!(help.contains("--ca-cert"), "{help}");
    assert!(!help.contains(SECRET), "--help shows the token: {help}");
    assert!(!help.contains(&key), "--help shows the key: {help}");
}

#[test]
fn debug_of_options_never_shows_the_token() {
    let shown = format!("{:?}", Options::default().token(SECRET));
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("token: Some(\"<redacted>\")"), "{shown}");
}
