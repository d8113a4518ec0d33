//! Typed values to payload bytes and back: serde, then MessagePack (with field names, so
//! JavaScript handlers see objects), then the transform chain.

use std::{any::TypeId, mem::ManuallyDrop};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{pool, transform::TransformChain, wire::JobFrameBuilder, Error, Result};

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

/// Deserializes MessagePack bytes (already through the transform chain), like
/// [`from_msgpack`]. Into [`Bytes`], a large MessagePack `bin` (at least [`pool::LARGE`]
/// bytes, making up the whole of `bytes`) is not copied: the value shares `bytes`' memory.
/// Smaller ones are copied, so that a small value never keeps a large buffer alive.
///
/// ```
/// use bytes::Bytes;
/// use distchan_protocol::{payload, pool};
///
/// let data = Bytes::from(vec![7u8; pool::LARGE]);
/// let encoded = payload::to_msgpack(&data)?;
/// let back: Bytes = payload::from_msgpack_shared(encoded.clone())?;
/// assert_eq!(back, data);
/// assert!(encoded.as_ptr_range().contains(&back.as_ptr()), "shared, not copied");
/// # Ok::<(), distchan_protocol::Error>(())
/// ```
pub fn from_msgpack_shared<T: DeserializeOwned>(bytes: Bytes) -> Result<T> {
    // `typeid::of` rather than `TypeId::of`: `T` need not be 'static.
    if typeid::of::<T>() == TypeId::of::<Bytes>() {
        if let Some(body) = large_bin(&bytes) {
            let body = ManuallyDrop::new(body);
            // SAFETY: `T` is `Bytes`: their type ids are equal, and `Bytes` has no lifetime
            // parameter that the comparison could have ignored. `body` is not dropped.
            return Ok(unsafe { std::mem::transmute_copy::<Bytes, T>(&body) });
        }
    }
    from_msgpack(&bytes)
}

/// The MessagePack marker of a `bin 32`: a length of four bytes (big-endian) follows, then
/// the bytes.
const BIN32: u8 = 0xc6;

/// The body of `bytes` when it is one MessagePack `bin` of at least [`pool::LARGE`] bytes
/// and nothing else (a `bin 32`: the shorter kinds hold less).
fn large_bin(bytes: &Bytes) -> Option<Bytes> {
    let (&BIN32, rest) = bytes.split_first()? else {
        return None;
    };
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (len >= pool::LARGE && rest.len() == 4 + len).then(|| bytes.slice(5..))
}

/// Serializes `value` and applies the transform chain.
pub fn encode<T: Serialize + ?Sized>(value: &T, chain: &TransformChain) -> Result<Bytes> {
    chain.encode(to_msgpack(value)?)
}

/// Serializes `value` and applies the transform chain into a [`JobFrameBuilder`], which
/// completes the job's frame around the payload once the job has an id. Without transforms
/// the value is serialized straight into the frame: no copy of the payload is made, and a
/// [`Bytes`] of at least [`pool::LARGE`] bytes is not even copied into the frame: it ends
/// the frame as a part of its own, shared ([`JobFrameBuilder::share`]).
///
/// ```
/// use bytes::Bytes;
/// use distchan_protocol::{payload, pool, transform::TransformChain, JobId};
///
/// let data = Bytes::from(vec![7u8; pool::LARGE]);
/// let frame = payload::encode_job(&data, &TransformChain::new())?.finish(JobId(0));
/// assert_eq!(frame.tail().as_ptr(), data.as_ptr(), "shared, not copied");
/// # Ok::<(), distchan_protocol::Error>(())
/// ```
pub fn encode_job<T: Serialize + ?Sized>(
    value: &T,
    chain: &TransformChain,
) -> Result<JobFrameBuilder> {
    if !chain.is_empty() {
        return Ok(JobFrameBuilder::from_payload(&encode(value, chain)?));
    }
    if let Some(large) = large_bytes(value) {
        // What MessagePack makes of it: a `bin 32` header, then the bytes.
        let mut frame = JobFrameBuilder::with_capacity(5);
        std::io::Write::write_all(&mut frame, &[BIN32])?;
        std::io::Write::write_all(&mut frame, &(large.len() as u32).to_be_bytes())?;
        frame.share(large);
        return Ok(frame);
    }
    let mut frame = JobFrameBuilder::with_capacity(64);
    write_msgpack(&mut frame, value)?;
    Ok(frame)
}

/// `value` when it is a [`Bytes`] of at least [`pool::LARGE`] bytes (and at most a
/// MessagePack `bin`'s limit), shared.
fn large_bytes<T: ?Sized>(value: &T) -> Option<Bytes> {
    // `typeid::of` rather than `TypeId::of`: `T` need not be 'static.
    if typeid::of::<T>() != TypeId::of::<Bytes>() {
        return None;
    }
    // SAFETY: `T` is `Bytes` (their type ids are equal, and `Bytes` has no lifetime
    // parameter that the comparison could have ignored), so `value` points to a `Bytes`.
    let bytes = unsafe { &*(value as *const T as *const Bytes) };
    (pool::LARGE..=u32::MAX as usize)
        .contains(&bytes.len())
        .then(|| bytes.clone())
}

/// Undoes the transform chain and deserializes.
/// Into [`Bytes`], a large payload shares `bytes`' memory (see [`from_msgpack_shared`]).
pub fn decode<T: DeserializeOwned>(bytes: Bytes, chain: &TransformChain) -> Result<T> {
    from_msgpack_shared(chain.decode(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Aes256GcmTransform;
    use std::io::Write;

    /// True when `value` lies inside `buffer`'s memory.
    fn shares(buffer: &Bytes, value: &Bytes) -> bool {
        buffer.as_ptr_range().contains(&value.as_ptr())
    }

    #[test]
    fn a_large_bin_decodes_into_bytes_sharing_its_buffer() {
        let chain = TransformChain::new();
        let data = Bytes::from((0..pool::LARGE + 3).map(|i| i as u8).collect::<Vec<u8>>());
        let encoded = to_msgpack(&data).unwrap();
        let back: Bytes = decode(encoded.clone(), &chain).unwrap();
        assert_eq!(back, data);
        assert!(shares(&encoded, &back));
    }

    #[test]
    fn small_bins_other_types_and_other_shapes_decode_as_before_with_a_copy() {
        // A small bin into Bytes: copied, so that it keeps no frame alive.
        let small = Bytes::from_static(b"small payload");
        let encoded = to_msgpack(&small).unwrap();
        let back: Bytes = from_msgpack_shared(encoded.clone()).unwrap();
        assert_eq!(back, small);
        assert!(!shares(&encoded, &back));

        // A large bin into another type.
        let data = vec![9u8; pool::LARGE];
        let encoded = to_msgpack(&serde_bytes::ByteBuf::from(data.clone())).unwrap();
        let other: serde_bytes::ByteBuf = from_msgpack_shared(encoded.clone()).unwrap();
        assert_eq!(other.into_vec(), data);

        // A large bin followed by more bytes: not only a bin, so serde decides, as before.
        let mut longer = encoded.to_vec();
        longer.push(0xc0);
        let longer = Bytes::from(longer);
        let expected: Result<Bytes> = from_msgpack(&longer);
        let got: Result<Bytes> = from_msgpack_shared(longer.clone());
        match (expected, got) {
            (Ok(a), Ok(b)) => assert!(a == b && !shares(&longer, &b)),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{a:?} vs {b:?}"),
        }

        // A bin announcing more bytes than there are: the decode error serde gives.
        let truncated = encoded.slice(..encoded.len() - 1);
        assert!(matches!(
            from_msgpack_shared::<Bytes>(truncated),
            Err(Error::Decode(_))
        ));
    }

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
            assert!(frame.tail().is_empty(), "one part");
            let wire::ToWorker::Job(job) = wire::decode_to_worker(&frame.to_bytes()).unwrap()
            else {
                panic!("not a job frame");
            };
            assert_eq!(job.id, JobId(9));
            let back: Vec<(u32, String)> = decode(job.payload, &chain).unwrap();
            assert_eq!(back, value);
        }
    }

    #[test]
    fn a_large_bytes_job_ends_its_frame_shared_and_reads_back_the_same() {
        use crate::{wire, JobId};
        let plain = TransformChain::new();
        let encrypted = TransformChain::new().with(Aes256GcmTransform::new(&[3; 32]));
        let large = Bytes::from((0..pool::LARGE + 9).map(|i| i as u8).collect::<Vec<u8>>());
        let small = Bytes::from(vec![5u8; pool::LARGE - 1]);
        for (value, chain, shared) in [
            (&large, &plain, true),
            (&large, &encrypted, false), // transformed: a new payload
            (&small, &plain, false),
        ] {
            let frame = encode_job(value, chain).unwrap().finish(JobId(300));
            assert_eq!(frame.tail().as_ptr() == value.as_ptr(), shared);
            let whole = frame.to_bytes();
            assert_eq!(whole.len(), frame.len());
            // The same bytes as the value serialized into the frame.
            let reference = {
                let mut b = wire::JobFrameBuilder::with_capacity(16);
                b.write_all(&encode(value, chain).unwrap()).unwrap();
                b.finish(JobId(300)).to_bytes()
            };
            if chain.is_empty() {
                assert_eq!(whole, reference);
            }
            let wire::ToWorker::Job(job) = wire::decode_to_worker(&whole).unwrap() else {
                panic!("not a job frame");
            };
            let back: Bytes = decode(job.payload, chain).unwrap();
            assert_eq!(&back, value);
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
