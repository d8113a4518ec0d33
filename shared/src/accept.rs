//! The coordinator's side of the handshake: which worker it accepts, as decisions without
//! I/O.
//!
//! The coordinator reads the worker's first frame and the HTTP upgrade request, then asks
//! [`accept_hello`] whether the worker may join; a refusal is sent back as a
//! [`ToWorker::Refused`](crate::wire::ToWorker::Refused) frame and a close frame made by
//! [`close_frame_for`](crate::session::close_frame_for), which a worker reads back with
//! [`WorkerSession::close_reason`](crate::session::WorkerSession::close_reason) when the
//! refusal frame itself is lost.
//!
//! ```
//! use distchan_protocol::accept::{accept_hello, AcceptPolicy};
//! use distchan_protocol::wire::{self, Hello, RefusalCode, ToCoordinator, WorkerKind, PROTOCOL_VERSION};
//!
//! let policy = AcceptPolicy { token: Some("open sesame"), allowed_origins: &[] };
//! let hello = |token: Option<&str>| {
//!     wire::encode_to_coordinator(&ToCoordinator::Hello(Hello {
//!         version: PROTOCOL_VERSION,
//!         token: token.map(str::to_owned),
//!         capacity: 4,
//!         agent: "doc".into(),
//!         kind: WorkerKind::Native,
//!         resume: None,
//!         group: None,
//!     }))
//! };
//! let offered = [PROTOCOL_VERSION];
//! assert!(accept_hello(&hello(Some("open sesame"))?, &offered, None, &policy).is_ok());
//! let refusal = accept_hello(&hello(None)?, &offered, None, &policy).unwrap_err();
//! assert_eq!(refusal.code, RefusalCode::BadToken);
//! # Ok::<(), distchan_protocol::Error>(())
//! ```

use subtle::ConstantTimeEq;

use crate::wire::{self, Hello, Refusal, RefusalCode, ToCoordinator, PROTOCOL_VERSION};

/// What a coordinator asks of the workers it accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptPolicy<'a> {
    /// The access token a worker must present, if any.
    pub token: Option<&'a str>,
    /// Origins (`scheme://host:port`) whose pages may volunteer; empty allows every origin.
    /// Workers that send no `Origin` header (native ones) are not concerned.
    pub allowed_origins: &'a [String],
}

/// Checks a worker's first frame, its hello, against `policy`: the hello itself, the
/// protocol version (in the hello and in the WebSocket subprotocols `offered_versions`),
/// the page's `origin`, the access token and the declared capacity, in that order.
///
/// Returns the hello when the worker may join, or the refusal to send it.
pub fn accept_hello(
    first: &[u8],
    offered_versions: &[u32],
    origin: Option<&str>,
    policy: &AcceptPolicy<'_>,
) -> Result<Hello, Refusal> {
    if let Some(&theirs) = offered_versions.first() {
        if !offered_versions.contains(&PROTOCOL_VERSION) {
            return Err(version_mismatch(theirs));
        }
    }
    let hello = match wire::decode_to_coordinator(first) {
        Ok(ToCoordinator::Hello(hello)) => hello,
        Ok(_) => {
            return Err(Refusal::new(
                RefusalCode::Malformed,
                "the first message must be a hello",
            ))
        }
        Err(e) => {
            return Err(match wire::peek_hello_version(first) {
                Some(v) if v != PROTOCOL_VERSION => version_mismatch(v),
                _ => Refusal::new(RefusalCode::Malformed, format!("unreadable hello: {e}")),
            })
        }
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(version_mismatch(hello.version));
    }
    if let Some(origin) = origin {
        if !policy.allowed_origins.is_empty() && !policy.allowed_origins.iter().any(|o| o == origin)
        {
            return Err(Refusal::new(
                RefusalCode::OriginNotAllowed,
                format!("pages from {origin} may not volunteer here"),
            ));
        }
    }
    if let Some(expected) = policy.token {
        if !token_matches(hello.token.as_deref(), expected) {
            let what = if hello.token.is_none() {
                "an access token is required"
            } else {
                "wrong access token"
            };
            return Err(Refusal::new(RefusalCode::BadToken, what));
        }
    }
    if hello.capacity == 0 {
        return Err(Refusal::new(
            RefusalCode::Malformed,
            "capacity must be at least 1",
        ));
    }
    Ok(hello)
}

/// The WebSocket subprotocol a coordinator answers with, among the names a worker
/// `offered`: this version's when offered; otherwise the first `distchan.vN` of another
/// version, so that the WebSocket opens and the worker can read why it is refused; `None`
/// when no distchan subprotocol was offered.
pub fn agreed_subprotocol<'a>(offered: &[&'a str]) -> Option<&'a str> {
    let ours = wire::subprotocol(PROTOCOL_VERSION);
    offered
        .iter()
        .find(|p| **p == ours)
        .or_else(|| {
            offered
                .iter()
                .find(|p| wire::parse_subprotocol(p).is_some())
        })
        .copied()
}

/// True when the token a worker `given` is `expected`, compared in constant time (no
/// token at all matches nothing).
pub fn token_matches(given: Option<&str>, expected: &str) -> bool {
    let given = given.unwrap_or("");
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn version_mismatch(theirs: u32) -> Refusal {
    Refusal::new(
        RefusalCode::VersionMismatch,
        format!(
            "protocol version mismatch: the coordinator speaks {}, the worker {}",
            wire::subprotocol(PROTOCOL_VERSION),
            wire::subprotocol(theirs)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WorkerKind;

    const OURS: &[u32] = &[PROTOCOL_VERSION];

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token: None,
            capacity: 2,
            agent: "test".into(),
            kind: WorkerKind::Native,
            resume: None,
            group: None,
        }
    }

    fn frame(hello: Hello) -> bytes::Bytes {
        wire::encode_to_coordinator(&ToCoordinator::Hello(hello)).unwrap()
    }

    fn refusal(
        first: &[u8],
        offered: &[u32],
        origin: Option<&str>,
        policy: AcceptPolicy,
    ) -> Refusal {
        accept_hello(first, offered, origin, &policy).expect_err("a refusal")
    }

    #[test]
    fn a_plain_hello_is_accepted_as_it_was_sent() {
        let accepted = accept_hello(&frame(hello()), OURS, None, &AcceptPolicy::default());
        assert_eq!(accepted, Ok(hello()));
        let no_subprotocol = accept_hello(&frame(hello()), &[], None, &AcceptPolicy::default());
        assert_eq!(
            no_subprotocol,
            Ok(hello()),
            "offering no subprotocol is fine"
        );
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let by_subprotocol = refusal(&frame(hello()), &[7], None, AcceptPolicy::default());
        let in_the_hello = refusal(
            &frame(Hello {
                version: 7,
                ..hello()
            }),
            OURS,
            None,
            AcceptPolicy::default(),
        );
        for r in [by_subprotocol, in_the_hello] {
            assert_eq!(r.code, RefusalCode::VersionMismatch);
            assert!(
                r.reason.contains(&wire::subprotocol(PROTOCOL_VERSION))
                    && r.reason.contains("distchan.v7"),
                "{r}"
            );
        }
    }

    #[test]
    fn a_foreign_hello_that_does_not_decode_is_still_a_version_mismatch() {
        #[derive(serde::Serialize)]
        struct Future {
            version: u32,
            shape: Vec<u8>,
        }
        #[derive(serde::Serialize)]
        enum Message {
            Hello(Future),
        }
        let mut bytes = Vec::new();
        let foreign = Message::Hello(Future {
            version: 9,
            shape: vec![1],
        });
        serde::Serialize::serialize(
            &foreign,
            &mut rmp_serde::Serializer::new(&mut bytes).with_struct_map(),
        )
        .unwrap();
        let r = refusal(&bytes, &[], None, AcceptPolicy::default());
        assert_eq!(r.code, RefusalCode::VersionMismatch, "{r}");
        let garbage = refusal(&[0xc1, 0xff], &[], None, AcceptPolicy::default());
        assert_eq!(garbage.code, RefusalCode::Malformed);
        assert!(garbage.reason.contains("unreadable hello"), "{garbage}");
    }

    #[test]
    fn the_first_message_must_be_a_hello() {
        let drain = wire::encode_to_coordinator(&ToCoordinator::Drain).unwrap();
        let r = refusal(&drain, OURS, None, AcceptPolicy::default());
        assert_eq!(r.code, RefusalCode::Malformed);
        assert!(r.reason.contains("must be a hello"), "{r}");
    }

    #[test]
    fn origins_off_the_list_are_refused_and_workers_without_one_pass() {
        let allowed = ["http://good:8080".to_owned()];
        let policy = AcceptPolicy {
            token: None,
            allowed_origins: &allowed,
        };
        let hello = frame(hello());
        assert!(accept_hello(&hello, OURS, Some("http://good:8080"), &policy).is_ok());
        assert!(accept_hello(&hello, OURS, None, &policy).is_ok());
        let r = refusal(&hello, OURS, Some("http://evil:8080"), policy);
        assert_eq!(r.code, RefusalCode::OriginNotAllowed);
        assert!(r.reason.contains("http://evil:8080"), "{r}");
    }

    #[test]
    fn the_token_must_match_and_its_absence_is_named() {
        let policy = AcceptPolicy {
            token: Some("open sesame"),
            allowed_origins: &[],
        };
        let with = |token: &str| {
            frame(Hello {
                token: Some(token.into()),
                ..hello()
            })
        };
        assert!(accept_hello(&with("open sesame"), OURS, None, &policy).is_ok());
        let wrong = refusal(&with("open sesamE"), OURS, None, policy);
        assert_eq!(
            (wrong.code, wrong.reason.as_str()),
            (RefusalCode::BadToken, "wrong access token")
        );
        let missing = refusal(&frame(hello()), OURS, None, policy);
        assert_eq!(
            (missing.code, missing.reason.as_str()),
            (RefusalCode::BadToken, "an access token is required")
        );
    }

    #[test]
    fn a_worker_taking_no_jobs_is_refused() {
        let r = refusal(
            &frame(Hello {
                capacity: 0,
                ..hello()
            }),
            OURS,
            None,
            AcceptPolicy::default(),
        );
        assert_eq!(r.code, RefusalCode::Malformed);
        assert!(r.reason.contains("capacity"), "{r}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(Some("abc"), "abc"));
        assert!(!token_matches(Some("ab"), "abc"));
        assert!(!token_matches(Some("abcd"), "abc"));
        assert!(!token_matches(None, "abc"));
    }

    #[test]
    fn ours_is_agreed_when_offered_else_the_first_distchan_name() {
        let ours = wire::subprotocol(PROTOCOL_VERSION);
        assert_eq!(
            agreed_subprotocol(&["chat", "distchan.v7", &ours]),
            Some(ours.as_str())
        );
        assert_eq!(
            agreed_subprotocol(&["chat", "distchan.v7", "distchan.v8"]),
            Some("distchan.v7")
        );
        assert_eq!(agreed_subprotocol(&["chat"]), None);
        assert_eq!(agreed_subprotocol(&[]), None);
    }
}
