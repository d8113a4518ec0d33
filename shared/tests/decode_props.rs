//! Property tests: no byte sequence makes the decoders or the worker session panic, and
//! valid messages survive arbitrary round trips.

use bytes::Bytes;
use distchan_protocol::{
    session::{SessionConfig, WorkerSession},
    transform::{Aes256GcmTransform, TransformChain},
    wire::{self, Job, JobResult, ToCoordinator, ToWorker, Welcome},
    JobId,
};
use proptest::prelude::*;

fn welcome_frame() -> Bytes {
    wire::encode_to_worker(&ToWorker::Welcome(Welcome {
        worker_id: 1,
        task: None,
        heartbeat_ms: 0,
        max_frame: 0,
        module: None,
        ..Default::default()
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_to_coordinator(&frame);
        let _ = wire::decode_to_worker(&frame);
        let _ = wire::peek_hello_version(&frame);
    }

    #[test]
    fn the_session_never_panics_on_any_frame_sequence(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        welcomed in any::<bool>(),
    ) {
        let chain = TransformChain::new().with(Aes256GcmTransform::new(&[5; 32]));
        let mut session = WorkerSession::new(SessionConfig::native(2), chain);
        if welcomed {
            session.handle_frame(&welcome_frame()).unwrap();
        }
        for f in frames {
            let _ = session.handle_frame(&f);
        }
        let _ = session.result_frame(JobId(0), Ok(Bytes::new()));
    }

    #[test]
    fn mutated_valid_frames_never_panic(id in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
                                        flip in any::<usize>(), cut in any::<usize>()) {
        let frames = [
            wire::encode_to_worker(&ToWorker::Job(Job { id: JobId(id), payload: payload.clone().into() })).unwrap(),
            wire::encode_to_coordinator(&ToCoordinator::Result(JobResult { id: JobId(id), outcome: Ok(payload.into()) })).unwrap(),
        ];
        for frame in frames {
            let mut m = frame.to_vec();
            let i = flip % m.len();
            m[i] ^= 0xff;
            m.truncate(cut % (m.len() + 1));
            let _ = wire::decode_to_worker(&m);
            let _ = wire::decode_to_coordinator(&m);
        }
    }

    #[test]
    fn job_frames_round_trip(id in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let msg = ToWorker::Job(Job { id: JobId(id), payload: payload.into() });
        prop_assert_eq!(wire::decode_to_worker(&wire::encode_to_worker(&msg).unwrap()).unwrap(), msg);
    }
}
