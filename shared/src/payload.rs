//! Typed values to payload bytes and back: serde, then MessagePack (with field names, so
//! JavaScript handlers see objects), then the transform chain.

use std::{any::TypeId, mem::ManuallyDrop};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    pool,
    transform::TransformChain,
    wire::{self, JobFrameBuilder},
    Error, Result,
};

/// Serializes `value` to MessagePack without transforms.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    // A `Bytes` as serde writes it (see `encode_job`), without its machinery.
    if let Some((bytes, (header, n))) = as_bin(value) {
        let mut out = Vec::with_capacity(n + bytes.len());
        out.extend_from_slice(&header[..n]);
        out.extend_from_slice(bytes);
        return Ok(out.into());
    }
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
        // One `bin` and nothing else, read here rather than through serde's machinery:
        // serde gives the same value (anything else is left to it).
        if let Some(start) = bin_start(&bytes) {
            let body = match bytes.len() - start >= pool::LARGE {
                true => bytes.slice(start..),
                false => Bytes::copy_from_slice(&bytes[start..]),
            };
            let body = ManuallyDrop::new(body);
            // SAFETY: `T` is `Bytes`: their type ids are equal, and `Bytes` has no lifetime
            // parameter that the comparison could have ignored. `body` is not dropped.
            return Ok(unsafe { std::mem::transmute_copy::<Bytes, T>(&body) });
        }
    }
    from_msgpack(&bytes)
}

/// Where the body starts when `bytes` is one MessagePack `bin` and nothing else.
fn bin_start(bytes: &[u8]) -> Option<usize> {
    let (len, n) = wire::get_len(bytes, false)?;
    // `get_len` saw the whole header: no sum that could overflow a 32-bit usize.
    (bytes.len() - n == len).then_some(n)
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
    // A `Bytes` is what MessagePack makes of it, a `bin` header then the bytes, written
    // here rather than through serde's machinery; a large one is shared, not copied.
    if let Some((bytes, (header, n))) = as_bin(value) {
        let large = bytes.len() >= pool::LARGE;
        let mut frame = JobFrameBuilder::with_capacity(n + if large { 0 } else { bytes.len() });
        std::io::Write::write_all(&mut frame, &header[..n])?;
        match large {
            true => frame.share(bytes.clone()),
            false => std::io::Write::write_all(&mut frame, bytes)?,
        }
        return Ok(frame);
    }
    // Room for a frame kept in place: a small value is written there, a larger one moves
    // to an allocated buffer as it grows.
    let mut frame = JobFrameBuilder::with_capacity(wire::INLINE_MAX);
    write_msgpack(&mut frame, value)?;
    Ok(frame)
}

/// `value` when it is a [`Bytes`] (of at most a `bin`'s limit), with the header
/// MessagePack writes before it (the shortest `bin` that holds it, as serde writes) and
/// that header's length.
fn as_bin<T: ?Sized>(value: &T) -> Option<(&Bytes, ([u8; 5], usize))> {
    let bytes = as_bytes(value).filter(|b| u32::try_from(b.len()).is_ok())?;
    let mut header = [0u8; 5];
    let n = wire::put_len(&mut header, bytes.len(), false);
    Some((bytes, (header, n)))
}

/// `value` when it is a [`Bytes`].
fn as_bytes<T: ?Sized>(value: &T) -> Option<&Bytes> {
    // `typeid::of` rather than `TypeId::of`: `T` need not be 'static.
    if typeid::of::<T>() != TypeId::of::<Bytes>() {
        return None;
    }
    // SAFETY: `T` is `Bytes` (their type ids are equal, and `Bytes` has no lifetime
    // parameter that the comparison could have ignored), so `value` points to a `Bytes`.
    Some(unsafe { &*(value as *const T as *const Bytes) })
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
    fn bytes_are_written_and_read_as_serde_does_at_every_bin_size() {
        use crate::JobId;
        let plain = TransformChain::new();
        for len in [
            0,
            1,
            16,
            255,
            256,
            65_535,
            65_536,
            pool::LARGE - 1,
            pool::LARGE,
        ] {
            let value = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            let reference = rmp_serde::encode::to_vec_named(&value).unwrap();
            let frame = encode_job(&value, &plain)
                .unwrap()
                .finish(JobId(1))
                .to_bytes();
            let crate::wire::ToWorker::Job(job) = crate::wire::decode_to_worker(&frame).unwrap()
            else {
                panic!("not a job frame");
            };
            assert_eq!(&job.payload[..], &reference[..], "{len} bytes written");
            assert_eq!(
                &to_msgpack(&value).unwrap()[..],
                &reference[..],
                "{len} bytes"
            );
            let back: Bytes = from_msgpack_shared(Bytes::from(reference.clone())).unwrap();
            let serde: Bytes = rmp_serde::from_slice(&reference).unwrap();
            assert_eq!((&back, &serde), (&value, &value), "{len} bytes read");
            let short = Bytes::from(reference[..reference.len() - 1].to_vec());
            assert!(
                matches!(from_msgpack_shared::<Bytes>(short), Err(Error::Decode(_))),
                "{len} bytes, one missing"
            );
        }
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
