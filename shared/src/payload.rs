//! Typed values to payload bytes and back: serde, then MessagePack (with field names, so
//! JavaScript handlers see objects), then the transform chain.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{transform::TransformChain, wire::JobFrameBuilder, Error, Result};

/// Serializes `value` to MessagePack without transforms.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    let mut out = Vec::new();
    write_msgpack(&mut out, value)?;
    Ok(out.into())
}

/// Appends `value` as MessagePack, with field names, to `out`: the one place the format of
/// payloads is chosen.
fn write_msgpack<W, T>(out: &mut W, value: &T) -> Result<()>
where
    W: std::io::Write + ?Sized,
    T: Serialize + ?Sized,
{
    rmp_serde::encode::write_named(out, value).map_err(|e| Error::Encode(Box::new(e)))
}

/// Deserializes MessagePack bytes (already through the transform chain).
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(Error::Decode)
}

/// Serializes `value` and applies the transform chain.
pub fn encode<T: Serialize + ?Sized>(value: &T, chain: &TransformChain) -> Result<Bytes> {
    chain.encode(to_msgpack(value)?)
}

/// Serializes `value` and applies the transform chain into a [`JobFrameBuilder`], which
/// completes the job's frame around the payload once the job has an id. Without transforms
/// the value is serialized straight into the frame: no copy of the payload is made.
pub fn encode_job<T: Serialize + ?Sized>(
    value: &T,
    chain: &TransformChain,
) -> Result<JobFrameBuilder> {
    if !chain.is_empty() {
        return Ok(JobFrameBuilder::from_payload(&encode(value, chain)?));
    }
    let mut frame = JobFrameBuilder::with_capacity(64);
    write_msgpack(&mut frame, value)?;
    Ok(frame)
}

/// Undoes the transform chain and deserializes.
pub fn decode<T: DeserializeOwned>(bytes: Bytes, chain: &TransformChain) -> Result<T> {
    let plain = chain.decode(bytes)?;
    from_msgpack(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Aes256GcmTransform;

    #[test]
    fn wrong_type_is_a_decode_error() {
        let chain = TransformChain::new();
        let bytes = encode(&"text", &chain).unwrap();
        assert!(matches!(
            decode::<u64>(bytes, &chain),
            Err(Error::Decode(_))
        ));
    }

    #[test]
    fn job_frames_carry_the_encoded_payload() {
        use crate::{wire, JobId};
        let value = vec![(1u32, "a".to_string())];
        for chain in [
            TransformChain::new(),
            TransformChain::new().with(Aes256GcmTransform::new(&[3; 32])),
        ] {
            let frame = encode_job(&value, &chain).unwrap().finish(JobId(9));
            let wire::ToWorker::Job(job) = wire::decode_to_worker(&frame).unwrap() else {
                panic!("not a job frame");
            };
            assert_eq!(job.id, JobId(9));
            let back: Vec<(u32, String)> = decode(job.payload, &chain).unwrap();
            assert_eq!(back, value);
        }
        assert_eq!(
            encode_job(&"x", &TransformChain::new()).unwrap().payload(),
            &to_msgpack(&"x").unwrap()[..]
        );
    }

    #[test]
    fn round_trip_through_aes() {
        let chain = TransformChain::new().with(Aes256GcmTransform::new(&[3; 32]));
        let v = vec![(1u32, "a".to_string()), (2, "b".to_string())];
        let back: Vec<(u32, String)> = decode(encode(&v, &chain).unwrap(), &chain).unwrap();
        assert_eq!(back, v);
    }
}
